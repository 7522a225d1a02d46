//! The roles a caller's token carries, as Neutron's policy names them.

/// The roles Neutron's policy names (any other role a token carries means nothing to it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);
    /// `admin`: the cloud administrator.
    pub const ADMIN: Roles = Roles(1);
    /// `manager`: a project's manager.
    pub const MANAGER: Roles = Roles(2);
    /// `member`: may change its project's resources.
    pub const MEMBER: Roles = Roles(4);
    /// `reader`: may read its project's resources.
    pub const READER: Roles = Roles(8);
    /// `service`: other OpenStack services (Nova binds ports with it) and Isthmus's agents.
    pub const SERVICE: Roles = Roles(16);
    /// `advsvc`: Neutron's deprecated advanced-services role.
    pub const ADVSVC: Roles = Roles(32);
    /// `data_plane_integrator`.
    pub const DATA_PLANE_INTEGRATOR: Roles = Roles(64);

    const NAMES: [(&'static str, Roles); 7] = [
        ("admin", Roles::ADMIN),
        ("manager", Roles::MANAGER),
        ("member", Roles::MEMBER),
        ("reader", Roles::READER),
        ("service", Roles::SERVICE),
        ("advsvc", Roles::ADVSVC),
        ("data_plane_integrator", Roles::DATA_PLANE_INTEGRATOR),
    ];

    /// The role called `name` (case-insensitive), if the policy knows it.
    pub fn named(name: &str) -> Option<Roles> {
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, r)| *r)
    }

    /// The known roles among `names`.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Roles {
        names
            .into_iter()
            .filter_map(Roles::named)
            .fold(Roles::NONE, |all, r| all | r)
    }

    /// With the roles Keystone's default role implications add (`admin` ⇒ `manager` ⇒
    /// `member` ⇒ `reader`), as a Keystone token lists them.
    pub fn implied(self) -> Roles {
        let mut roles = self;
        if roles.has(Roles::ADMIN) {
            roles = roles | Roles::MANAGER;
        }
        if roles.has(Roles::MANAGER) {
            roles = roles | Roles::MEMBER;
        }
        if roles.has(Roles::MEMBER) {
            roles = roles | Roles::READER;
        }
        roles
    }

    /// Whether every role of `other` is here.
    pub const fn has(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    /// The roles as a small number (0..128), e.g. to index per-role-set caches.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The names of these roles.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .filter(move |(_, r)| self.has(*r))
            .map(|(n, _)| *n)
    }
}

impl std::ops::BitOr for Roles {
    type Output = Roles;
    fn bitor(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }
}
