//! Named network namespaces the agent owns (router namespaces), pinned by a bind mount of
//! the namespace onto a file in a directory, exactly as `ip netns add` does under
//! `/run/netns`. Pinned namespaces outlive the agent, so routing keeps working while it
//! restarts; the directory is configurable so that several agents can share one machine (the
//! lab) without their `qrouter-<id>` names colliding.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::AgentError;

fn os_error(what: &str, e: nix::Error) -> AgentError {
    AgentError::Kernel(format!("{what}: {e}"))
}

/// Whether `path` is a pinned namespace (a bind mount of an nsfs file).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates the namespace `name` pinned at `dir/name`, unless it already exists. Returns its
/// path.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, AgentError> {
    let path = dir.join(name);
    if is_pinned(&path) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    File::create(&path)?;
    let target = path.clone();
    // A dedicated thread moves into a fresh namespace and pins it; the thread then ends, so no
    // other work ever runs in the wrong namespace.
    let pinned = std::thread::spawn(move || -> Result<(), AgentError> {
        // unshare(2) moves only the calling thread.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| os_error("unshare(CLONE_NEWNET)", e))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| os_error("pinning the namespace", e))
    })
    .join()
    .map_err(|_| AgentError::Kernel("the namespace thread panicked".into()))?;
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes the namespace pinned at `dir/name` (its devices go with it once nothing else holds
/// it). Absent is not an error.
pub fn delete(dir: &Path, name: &str) -> Result<(), AgentError> {
    let path = dir.join(name);
    if is_pinned(&path) {
        nix::mount::umount2(&path, MntFlags::MNT_DETACH)
            .map_err(|e| os_error(&format!("unpinning {}", path.display()), e))?;
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Names of the pinned namespaces in `dir` that start with `prefix`.
pub fn list(dir: &Path, prefix: &str) -> Result<Vec<String>, AgentError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && is_pinned(&entry.path()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Opens a pinned namespace (for `setns`).
pub fn open(dir: &Path, name: &str) -> Result<File, AgentError> {
    Ok(File::open(dir.join(name))?)
}

/// Moves the calling thread into the network namespace of `netns` (a namespace switch is per
/// thread): only for threads made for the purpose, which end in it.
pub fn enter(netns: &File) -> Result<(), AgentError> {
    nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| os_error("entering a network namespace", e))
}

/// Runs `f` inside the pinned namespace `dir/name` on a thread of its own and returns what it
/// made: sockets made there stay in that namespace.
pub fn run_in<T, F>(dir: &Path, name: &str, f: F) -> Result<T, AgentError>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let netns = open(dir, name)?;
    std::thread::spawn(move || {
        enter(&netns)?;
        f().map_err(AgentError::from)
    })
    .join()
    .map_err(|_| AgentError::Kernel("the namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn pins_lists_and_removes_namespaces() {
        if !isthmus_lab::runnable() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), "qrouter-test").unwrap();
        assert!(is_pinned(&path));
        assert_ne!(
            inode(path.to_str().unwrap()),
            inode("/proc/self/ns/net"),
            "a namespace of its own"
        );
        assert_eq!(
            create(dir.path(), "qrouter-test").unwrap(),
            path,
            "idempotent"
        );
        std::fs::write(dir.path().join("qrouter-plain-file"), "").unwrap();
        assert_eq!(list(dir.path(), "qrouter-").unwrap(), ["qrouter-test"]);
        // Devices can be made inside it.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "link", "add", "name", "probe0", "type", "bridge"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        delete(dir.path(), "qrouter-test").unwrap();
        delete(dir.path(), "qrouter-test").unwrap();
        assert!(list(dir.path(), "qrouter-").unwrap().is_empty());
        assert!(!path.exists());
    }
}
