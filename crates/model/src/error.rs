//! Errors of the model, each carrying the Neutron fault type and HTTP status a client expects.

/// A Neutron API fault: the type name, status code and message of Neutron's own exceptions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// 400 `InvalidInput`.
    #[error("Invalid input for operation: {0}.")]
    InvalidInput(String),
    /// 400 `HTTPBadRequest`: malformed bodies, unknown or forbidden attributes, bad filters.
    #[error("{0}")]
    BadRequest(String),
    /// 400 `MalformedRequestBody`.
    #[error("Malformed request body: {0}.")]
    MalformedRequestBody(String),
    /// 403 `PolicyNotAuthorized`.
    #[error("({0}) is disallowed by policy.")]
    PolicyNotAuthorized(String),
    /// 404 `<Kind>NotFound`.
    #[error("{kind} {id} could not be found.")]
    NotFound {
        /// Resource kind as Neutron names it in the type (`Network`, `Port`, ...).
        kind: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// 404 `HTTPNotFound` for paths that name nothing.
    #[error("The resource could not be found.")]
    PathNotFound,
    /// 405 `HTTPMethodNotAllowed`.
    #[error("The method is not allowed for the requested URL.")]
    MethodNotAllowed,
    /// 409 `NetworkInUse`.
    #[error("Unable to complete operation on network {0}. There are one or more ports still in use on the network.")]
    NetworkInUse(String),
    /// 409 `SubnetInUse`.
    #[error("Unable to complete operation on subnet {0}: One or more ports have an IP allocation from this subnet.")]
    SubnetInUse(String),
    /// 409 `IpAddressAlreadyAllocated`.
    #[error("IP address {ip} already allocated in subnet {subnet_id}")]
    IpAddressAlreadyAllocated {
        /// Requested address.
        ip: String,
        /// Its subnet.
        subnet_id: String,
    },
    /// 409 `IpAddressGenerationFailure`.
    #[error("No more IP addresses available on network {0}.")]
    IpAddressGenerationFailure(String),
    /// 400 `InvalidIpForSubnet`.
    #[error("IP address {0} is not a valid IP for the specified subnet.")]
    InvalidIpForSubnet(String),
    /// 400 `InvalidIpForNetwork`.
    #[error("IP address {0} is not a valid IP for any of the subnets on the specified network.")]
    InvalidIpForNetwork(String),
    /// 409 `MacAddressInUse`.
    #[error("Unable to complete operation for network {net_id}. The mac address {mac} is in use.")]
    MacAddressInUse {
        /// Network of the port.
        net_id: String,
        /// Requested MAC.
        mac: String,
    },
    /// 409 `SecurityGroupRuleExists`.
    #[error("Security group rule already exists. Rule id is {0}.")]
    SecurityGroupRuleExists(String),
    /// 409 `SecurityGroupInUse`.
    #[error("Security Group {0} in use.")]
    SecurityGroupInUse(String),
    /// 409 `SecurityGroupCannotRemoveDefault`.
    #[error("Insufficient rights for removing default security group.")]
    SecurityGroupCannotRemoveDefault,
    /// 409 `PortSecurityPortHasSecurityGroup`.
    #[error("Port has security group associated. Cannot disable port security or ip address until security group is removed")]
    PortSecurityPortHasSecurityGroup,
    /// 409 `AddressPairAndPortSecurityRequired`.
    #[error("Port Security must be enabled in order to have allowed address pairs on a port.")]
    AddressPairAndPortSecurityRequired,
    /// 409 `OverlappingAllocationPools`.
    #[error("Found overlapping allocation pools: {0}")]
    OverlappingAllocationPools(String),
    /// 400 `OutOfBoundsAllocationPool`.
    #[error("The allocation pool {pool} spans beyond the subnet cidr {cidr}.")]
    OutOfBoundsAllocationPool {
        /// The pool as `start-end`.
        pool: String,
        /// The subnet cidr.
        cidr: String,
    },
    /// 409 `GatewayConflictWithAllocationPools`.
    #[error("Gateway ip {gateway} conflicts with allocation pool {pool}")]
    GatewayConflictWithAllocationPools {
        /// Gateway address.
        gateway: String,
        /// The pool as `start-end`.
        pool: String,
    },
    /// 409 `TunnelIdInUse` / `FlatNetworkInUse` (segmentation taken).
    #[error("{message}")]
    SegmentInUse {
        /// Neutron's type name.
        kind: &'static str,
        /// Message.
        message: String,
    },
    /// 503 `NoNetworkAvailable`.
    #[error("Unable to create the network. No tenant network is available for allocation.")]
    NoNetworkAvailable,
    /// 412 `RevisionNumberConstraintFailed`.
    #[error("Constrained to {expected}, but current revision is {current}")]
    RevisionNumberConstraintFailed {
        /// Revision the client required.
        expected: u64,
        /// Revision the resource has.
        current: u64,
    },
    /// Any other Neutron fault, with its type name and status (`RouterInUse`,
    /// `ExternalGatewayForFloatingIPNotFound`, ...).
    #[error("{message}")]
    Fault {
        /// Neutron's type name.
        kind: &'static str,
        /// HTTP status.
        status: u16,
        /// Message.
        message: String,
    },
    /// 409 `Conflict` for anything else conflicting with current state.
    #[error("{0}")]
    Conflict(String),
    /// 500 `InternalServerError`: a store or internal failure; the request may be retried.
    #[error("Request Failed: internal server error while processing your request. {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status Neutron answers with.
    pub fn status(&self) -> u16 {
        use Error::*;
        match self {
            InvalidInput(_)
            | BadRequest(_)
            | MalformedRequestBody(_)
            | InvalidIpForSubnet(_)
            | InvalidIpForNetwork(_)
            | OutOfBoundsAllocationPool { .. } => 400,
            PolicyNotAuthorized(_) => 403,
            NotFound { .. } | PathNotFound => 404,
            MethodNotAllowed => 405,
            NetworkInUse(_)
            | SubnetInUse(_)
            | IpAddressAlreadyAllocated { .. }
            | IpAddressGenerationFailure(_)
            | MacAddressInUse { .. }
            | SecurityGroupRuleExists(_)
            | SecurityGroupInUse(_)
            | SecurityGroupCannotRemoveDefault
            | PortSecurityPortHasSecurityGroup
            | AddressPairAndPortSecurityRequired
            | OverlappingAllocationPools(_)
            | GatewayConflictWithAllocationPools { .. }
            | SegmentInUse { .. }
            | Conflict(_) => 409,
            RevisionNumberConstraintFailed { .. } => 412,
            Fault { status, .. } => *status,
            Internal(_) => 500,
            NoNetworkAvailable => 503,
        }
    }

    /// The Neutron fault type name (`NeutronError.type`).
    pub fn type_name(&self) -> String {
        use Error::*;
        let name = match self {
            InvalidInput(_) => "InvalidInput",
            BadRequest(_) => "HTTPBadRequest",
            MalformedRequestBody(_) => "MalformedRequestBody",
            PolicyNotAuthorized(_) => "PolicyNotAuthorized",
            NotFound { kind, .. } => return format!("{kind}NotFound"),
            PathNotFound => "HTTPNotFound",
            MethodNotAllowed => "HTTPMethodNotAllowed",
            NetworkInUse(_) => "NetworkInUse",
            SubnetInUse(_) => "SubnetInUse",
            IpAddressAlreadyAllocated { .. } => "IpAddressAlreadyAllocated",
            IpAddressGenerationFailure(_) => "IpAddressGenerationFailure",
            InvalidIpForSubnet(_) => "InvalidIpForSubnet",
            InvalidIpForNetwork(_) => "InvalidIpForNetwork",
            MacAddressInUse { .. } => "MacAddressInUse",
            SecurityGroupRuleExists(_) => "SecurityGroupRuleExists",
            SecurityGroupInUse(_) => "SecurityGroupInUse",
            SecurityGroupCannotRemoveDefault => "SecurityGroupCannotRemoveDefault",
            PortSecurityPortHasSecurityGroup => "PortSecurityPortHasSecurityGroup",
            AddressPairAndPortSecurityRequired => "AddressPairAndPortSecurityRequired",
            OverlappingAllocationPools(_) => "OverlappingAllocationPools",
            OutOfBoundsAllocationPool { .. } => "OutOfBoundsAllocationPool",
            GatewayConflictWithAllocationPools { .. } => "GatewayConflictWithAllocationPools",
            SegmentInUse { kind, .. } | Fault { kind, .. } => kind,
            NoNetworkAvailable => "NoNetworkAvailable",
            RevisionNumberConstraintFailed { .. } => "RevisionNumberConstraintFailed",
            Conflict(_) => "Conflict",
            Internal(_) => "InternalServerError",
        };
        name.to_owned()
    }

    /// Shorthand for a 404 of `kind`.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// A Neutron fault of type `kind`.
    pub fn fault(kind: &'static str, status: u16, message: impl Into<String>) -> Self {
        Error::Fault {
            kind,
            status,
            message: message.into(),
        }
    }

    /// A 400 about one attribute, in the wording of Neutron's attribute validators.
    pub fn invalid_attr(attr: &str, reason: impl std::fmt::Display) -> Self {
        Error::BadRequest(format!("Invalid input for {attr}. Reason: {reason}."))
    }
}

/// Result type of the model.
pub type Result<T> = std::result::Result<T, Error>;
