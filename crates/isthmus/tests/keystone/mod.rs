//! A real Keystone (PyPI's `keystone` under uWSGI, SQLite, fernet tokens) started by the test
//! on a loopback port, with the users, projects and roles a test makes through its API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{free_port, request_full};

/// The venv `./test.sh` installs Keystone and uWSGI in.
pub fn venv() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-keystone");
    venv.join("bin/keystone-manage").exists().then_some(venv)
}

/// Where Keystone cannot run here: the reason (a failure under CI).
pub fn unavailable() -> Option<&'static str> {
    if venv().is_none() {
        return Some("no Keystone (./test.sh installs keystone and uwsgi in .venv-keystone)");
    }
    None
}

/// Seconds a Keystone token lives in the test cloud (short, so expiry is testable).
pub const TOKEN_LIFETIME: u64 = 20;

/// A running Keystone, killed on drop.
pub struct Keystone {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    admin_token: String,
}

fn manage(venv: &Path, conf: &Path, args: &[&str]) {
    let out = Command::new(venv.join("bin/keystone-manage"))
        .arg("--config-file")
        .arg(conf)
        .args(args)
        .output()
        .expect("run keystone-manage");
    assert!(
        out.status.success(),
        "keystone-manage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts uWSGI serving Keystone with `conf` on `listen`, through `command` (the uwsgi binary,
/// possibly wrapped to run in a network namespace).
fn spawn_uwsgi(mut command: Command, venv: &Path, conf: &Path, listen: &str, dir: &Path) -> Child {
    command
        .args(["--http-socket", listen])
        .args(["--module", "keystone.wsgi.api:application"])
        // One request per connection, said so: clients then never reuse a connection uWSGI
        // is about to close (python-requests does not retry a POST on it).
        .args(["--master", "--no-orphans", "--die-on-term"])
        .args(["--add-header", "Connection: close"])
        .args(["--processes", "1", "--threads", "8"])
        .arg("--virtualenv")
        .arg(venv)
        .env("OS_KEYSTONE_CONFIG_FILES", conf)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("uwsgi.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("spawn uwsgi")
}

impl Keystone {
    /// Moves Keystone from the host's loopback to `listen` through `wrap` (which makes the
    /// command that runs the given uwsgi binary where it should run, e.g. in a lab's fabric
    /// namespace): users and projects made so far stay (same database and keys). Waits until
    /// `ready` says it answers there.
    pub fn move_to(
        &mut self,
        wrap: impl FnOnce(&Path) -> Command,
        listen: &str,
        ready: impl Fn() -> bool,
    ) {
        self.stop();
        let venv = venv().expect("Keystone venv");
        let conf = self.dir.path().join("keystone.conf");
        self.child = spawn_uwsgi(
            wrap(&venv.join("bin/uwsgi")),
            &venv,
            &conf,
            listen,
            self.dir.path(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "Keystone did not start on {listen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        // SIGTERM lets uWSGI's master take its workers along; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Keystone {
    /// Bootstraps and starts Keystone (admin user `admin` / `admin-secret` in project
    /// `admin`), or `None` with the reason printed where it cannot run.
    pub fn start() -> Option<Keystone> {
        if let Some(why) = unavailable() {
            isthmus_lab::skip(why);
            return None;
        }
        let venv = venv()?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let conf = dir.path().join("keystone.conf");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nuse_stderr = false\nlog_file = {d}/keystone.log\n\
                 [database]\nconnection = sqlite:///{d}/keystone.db\n\
                 [token]\nprovider = fernet\nexpiration = {TOKEN_LIFETIME}\n\
                 [fernet_tokens]\nkey_repository = {d}/fernet-keys\n\
                 [fernet_receipts]\nkey_repository = {d}/fernet-receipts\n\
                 [credential]\nkey_repository = {d}/credential-keys\n\
                 [identity]\npassword_hash_rounds = 4\n"
            ),
        )
        .unwrap();
        let user = if cfg!(unix) { "root" } else { "" };
        manage(&venv, &conf, &["db_sync"]);
        for setup in ["fernet_setup", "credential_setup"] {
            manage(
                &venv,
                &conf,
                &[setup, "--keystone-user", user, "--keystone-group", user],
            );
        }
        let url = format!("http://127.0.0.1:{port}/v3");
        manage(
            &venv,
            &conf,
            &[
                "bootstrap",
                "--bootstrap-password",
                "admin-secret",
                "--bootstrap-public-url",
                &url,
                "--bootstrap-region-id",
                "RegionOne",
            ],
        );
        let child = spawn_uwsgi(
            Command::new(venv.join("bin/uwsgi")),
            &venv,
            &conf,
            &format!("127.0.0.1:{port}"),
            dir.path(),
        );
        let mut keystone = Keystone {
            child,
            port,
            dir,
            admin_token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _, _)) = request_full(port, "GET", "/v3", None, &[]) {
                break;
            }
            assert!(Instant::now() < deadline, "Keystone did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        keystone.admin_token = keystone.token("admin", "admin-secret", "admin");
        Some(keystone)
    }

    /// The end of uWSGI's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("uwsgi.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Keystone's v3 URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.port)
    }

    /// A token for `user` scoped to `project` (password authentication).
    pub fn token(&self, user: &str, password: &str, project: &str) -> String {
        self.token_scoped(
            user,
            password,
            json!({"project": {"name": project, "domain": {"id": "default"}}}),
        )
    }

    /// A token for `user` with `scope` (`{"system": {"all": true}}`, ...).
    pub fn token_scoped(&self, user: &str, password: &str, scope: Value) -> String {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": scope}});
        let (status, headers, answer) =
            request_full(self.port, "POST", "/v3/auth/tokens", Some(&body), &[]).unwrap();
        assert_eq!(status, 201, "token for {user}: {answer}");
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-subject-token"))
            .map(|(_, v)| v.clone())
            .expect("X-Subject-Token")
    }

    /// An admin call to Keystone's API.
    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, _, value) = request_full(
            self.port,
            method,
            path,
            body,
            &[("X-Auth-Token", &self.admin_token)],
        )
        .unwrap();
        (status, value)
    }

    /// The id of `name` in `collection` (`projects`, `users`, `roles`).
    fn id_of(&self, collection: &str, name: &str) -> String {
        let (status, v) = self.admin("GET", &format!("/v3/{collection}?name={name}"), None);
        assert_eq!(status, 200, "{v}");
        v[collection][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no {collection} {name}: {v}"))
            .to_owned()
    }

    /// Makes a project (idempotent) and returns its id.
    pub fn project(&self, name: &str) -> String {
        let (status, v) = self.admin(
            "POST",
            "/v3/projects",
            Some(&json!({"project": {"name": name, "domain_id": "default"}})),
        );
        match status {
            201 => v["project"]["id"].as_str().unwrap().to_owned(),
            409 => self.id_of("projects", name),
            _ => panic!("create project {name}: {status} {v}"),
        }
    }

    /// Makes a role (idempotent).
    pub fn role(&self, name: &str) -> String {
        let (status, v) = self.admin("POST", "/v3/roles", Some(&json!({"role": {"name": name}})));
        match status {
            201 => v["role"]["id"].as_str().unwrap().to_owned(),
            409 => self.id_of("roles", name),
            _ => panic!("create role {name}: {status} {v}"),
        }
    }

    /// Makes `user` (password `<user>-secret`) with `role` on `project`.
    pub fn user(&self, user: &str, project: &str, role: &str) -> String {
        let project_id = self.project(project);
        let (status, v) = self.admin(
            "POST",
            "/v3/users",
            Some(&json!({"user": {"name": user, "domain_id": "default",
                                   "password": format!("{user}-secret")}})),
        );
        let user_id = match status {
            201 => v["user"]["id"].as_str().unwrap().to_owned(),
            409 => self.id_of("users", user),
            _ => panic!("create user {user}: {status} {v}"),
        };
        let role_id = self.role(role);
        let (status, v) = self.admin(
            "PUT",
            &format!("/v3/projects/{project_id}/users/{user_id}/roles/{role_id}"),
            None,
        );
        assert!(status == 204 || status == 201, "grant {role}: {status} {v}");
        user_id
    }

    /// Registers `url` as the catalog's `network` service (what `openstack` finds Neutron by).
    pub fn register_network(&self, url: &str) {
        let (status, v) = self.admin(
            "POST",
            "/v3/services",
            Some(&json!({"service": {"name": "neutron", "type": "network"}})),
        );
        assert_eq!(status, 201, "{v}");
        let service = v["service"]["id"].as_str().unwrap();
        let (status, v) = self.admin(
            "POST",
            "/v3/endpoints",
            Some(
                &json!({"endpoint": {"service_id": service, "interface": "public",
                                       "url": url, "region_id": "RegionOne"}}),
            ),
        );
        assert_eq!(status, 201, "{v}");
    }

    /// Revokes `token`.
    pub fn revoke(&self, token: &str) {
        let (status, _, v) = request_full(
            self.port,
            "DELETE",
            "/v3/auth/tokens",
            None,
            &[
                ("X-Auth-Token", &self.admin_token),
                ("X-Subject-Token", token),
            ],
        )
        .unwrap();
        assert_eq!(status, 204, "revoke: {v}");
    }

    /// Writes `password` to a file in Keystone's directory and returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{password}\n")).unwrap();
        path
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        self.stop();
    }
}
