//! Real guests: QEMU (TCG; KVM guests hang on these machines) booting Debian's kernel with a
//! busybox initramfs, both built from Debian packages by `tools/guest-image.sh`. A guest's NIC
//! is a tap `tap<port[0:11]>` made in its node as Nova's libvirt driver makes it for
//! `vif_type=bridge` (persistent, left for the agent to plug), with the port's MAC on the
//! virtio NIC. A guest either runs a script given at boot (a second cpio appended to the
//! initramfs: `/test.sh`), prints to its serial console and powers off, or keeps a shell on
//! its serial console, a unix socket the lab (and an operator, with `socat`) talks to.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use crate::{run, tap_name, Lab, LabError, Result, COUNTER};

/// The QEMU binary the guests run on.
pub const QEMU: &str = "qemu-system-x86_64";

/// What a guest boots.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The base initramfs (busybox, virtio modules, `/init`).
    pub initramfs: PathBuf,
}

/// Whether QEMU is installed here.
pub fn qemu_available() -> bool {
    run(QEMU, &["--version"]).is_ok()
}

/// The guest image under `dir`, built from Debian's packages on first use.
pub fn image(dir: &Path) -> Result<GuestImage> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/guest-image.sh");
    let dir_text = dir.to_string_lossy().into_owned();
    run(&script.to_string_lossy(), &[&dir_text])?;
    Ok(GuestImage {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("base.cpio.gz"),
    })
}

/// Host files to copy into a guest for `programs` to run there: each program (as
/// `/<its file name>`) and the libraries it loads (`ldd`), at their own paths.
pub fn programs_with_libraries(programs: &[&Path]) -> Result<Vec<(PathBuf, String)>> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for program in programs {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| LabError::Failed {
                command: "ldd".into(),
                stderr: format!("{} is no program", program.display()),
            })?;
        files.push((program.to_path_buf(), format!("/{name}")));
        let out = run("ldd", &[&program.to_string_lossy()])?;
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux... (0x...)"
        for library in out
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        {
            if !files.iter().any(|(_, guest)| guest == library) {
                files.push((PathBuf::from(library), library.to_owned()));
            }
        }
    }
    Ok(files)
}

/// A running guest; killed when dropped.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    console: PathBuf,
    /// Its tap in the node.
    pub tap: String,
    /// The shell on its serial console, for guests booted with one.
    shell: Option<UnixStream>,
    /// Commands run so far (numbers their end markers).
    commands: u32,
}

impl Guest {
    /// What the guest printed so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the guest powers off (or `timeout`), returning its console output.
    pub fn wait(mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(self.console());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(LabError::Failed {
                    command: QEMU.to_owned(),
                    stderr: format!("guest still running after {timeout:?}:\n{}", self.console()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Guest {
    /// The unix socket of an interactive guest's serial console.
    pub fn console_socket(&self) -> &Path {
        &self.console
    }

    /// Runs `command` in an interactive guest's shell: its output and exit status.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(String, i32)> {
        let failed = |why: String| LabError::Failed {
            command: format!("guest: {command}"),
            stderr: why,
        };
        let shell = self
            .shell
            .as_mut()
            .ok_or_else(|| failed("the guest has no console shell".into()))?;
        self.commands += 1;
        // The tty echoes the line as typed (and the shell's line editor may redraw it, in
        // pieces): only the shell's evaluation prints the numbers, so the output is what lies
        // between the evaluated begin and end markers, whatever the echo looked like.
        let n = self.commands;
        let begin = format!("__ISTHMUS_B{}__", 100_000 + n);
        let marker = format!("__ISTHMUS_{}__", 100_000 + n);
        shell
            .write_all(
                format!(
                    "echo __ISTHMUS_B$((100000+{n}))__; {command}; echo __ISTHMUS_$((100000+{n}))__ $?\n"
                )
                .as_bytes(),
            )
            .map_err(|e| failed(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen).replace('\r', "");
            if let (Some(from), Some(at)) = (text.find(&format!("{begin}\n")), text.find(&marker)) {
                let status = text[at + marker.len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok());
                if let Some(status) = status.filter(|_| from < at) {
                    let output = text[from + begin.len() + 1..at].to_owned();
                    return Ok((output, status));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed(format!("no answer in {timeout:?}: {text}")));
            }
            shell
                .set_read_timeout(Some(left))
                .map_err(|e| failed(e.to_string()))?;
            match shell.read(&mut buf) {
                Ok(0) => return Err(failed("the console closed".into())),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }

    /// Leaves the guest running when dropped (the lab's `up` keeps it for `down`).
    pub fn keep(self) {
        // Not dropped: the process is neither killed nor waited for.
        let _ = std::mem::ManuallyDrop::new(self);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// What booting a guest for `port` on node `node` needs: the node, the guest's tap
    /// (created in the node as Nova's libvirt driver does, down and unattached), its MAC, and
    /// a scratch directory in the lab's (removed with the lab).
    fn prepare_guest<'a>(
        &'a self,
        node: usize,
        port: &'a serde_json::Value,
    ) -> Result<(&'a crate::Node, String, &'a str, PathBuf)> {
        let (Some(id), Some(mac)) = (port["id"].as_str(), port["mac_address"].as_str()) else {
            return Err(LabError::Port(port.to_string()));
        };
        let node = &self.nodes[node];
        let tap = tap_name(id);
        node.ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        let dir = self
            .dir
            .0
            .join(format!("guest-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
        Ok((node, tap, mac, dir))
    }

    /// Boots a guest on node `node` (0-based) for `port` (as the API returns it) running
    /// `script` (`/bin/sh`) once up; its tap is created in the node first, down and
    /// unattached, for the agent to plug.
    pub fn boot_guest(
        &self,
        node: usize,
        port: &serde_json::Value,
        script: &str,
        image: &GuestImage,
    ) -> Result<Guest> {
        let (node, tap, mac, dir) = self.prepare_guest(node, port)?;
        let initrd = boot_initramfs(&dir, image, script, &[])?;
        let console = dir.join("console.log");
        let child = spawn(
            node,
            image,
            &initrd,
            &format!("file:{}", console.display()),
            &tap,
            mac,
        )?;
        Ok(Guest {
            child,
            console,
            tap,
            shell: None,
            commands: 0,
        })
    }

    /// Boots an interactive guest on node `node` for `port`: a shell on its serial console,
    /// the unix socket `console` (which the lab connects to; `socat - UNIX-CONNECT:console`
    /// for an operator once the lab lets go of it).
    pub fn boot_interactive_guest(
        &self,
        node: usize,
        port: &serde_json::Value,
        image: &GuestImage,
        console: &Path,
    ) -> Result<Guest> {
        self.boot_interactive_guest_with(node, port, image, console, &[])
    }

    /// [`Lab::boot_interactive_guest`] with host files copied into the guest: (host path,
    /// absolute path in the guest). A dynamically linked program brings its libraries.
    pub fn boot_interactive_guest_with(
        &self,
        node: usize,
        port: &serde_json::Value,
        image: &GuestImage,
        console: &Path,
        files: &[(&Path, &str)],
    ) -> Result<Guest> {
        let (node, tap, mac, dir) = self.prepare_guest(node, port)?;
        let initrd = boot_initramfs(&dir, image, "ip link set eth0 up\nexec sh", files)?;
        let _ = std::fs::remove_file(console);
        let serial = format!("unix:{},server=on,wait=off", console.display());
        let child = spawn(node, image, &initrd, &serial, &tap, mac)?;
        let mut shell = None;
        for _ in 0..100 {
            if let Ok(stream) = UnixStream::connect(console) {
                shell = Some(stream);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let shell = shell.ok_or_else(|| LabError::Failed {
            command: QEMU.into(),
            stderr: format!("no console at {}", console.display()),
        })?;
        let mut guest = Guest {
            child,
            console: console.to_owned(),
            tap,
            shell: Some(shell),
            commands: 0,
        };
        // Up once its shell answers.
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if guest.run("true", Duration::from_secs(2)).is_ok() {
                // The shell's line editor wraps at the console's width (80 unless told), and
                // a wrapped echo is not one line: long commands need a wide console.
                guest.run("stty cols 4096", Duration::from_secs(5))?;
                return Ok(guest);
            }
        }
        Err(LabError::Failed {
            command: QEMU.into(),
            stderr: "the guest's shell did not answer in 120 s".into(),
        })
    }
}

/// Starts QEMU in `node` with the serial console on `serial` (a QEMU chardev).
fn spawn(
    node: &crate::Node,
    image: &GuestImage,
    initrd: &Path,
    serial: &str,
    tap: &str,
    mac: &str,
) -> Result<Child> {
    node.ns
        .command(QEMU)
        .args(["-accel", "tcg", "-m", "256", "-smp", "1", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(serial)
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-netdev")
        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
        // Entropy from the host: under TCG the guest's own gathers slowly, and a program that
        // waits for it (getrandom) hangs.
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: QEMU.into(),
            source,
        })
}

/// The base initramfs with `/test.sh` (and `files`: host path, guest path) appended as a
/// second archive (the kernel unpacks both).
fn boot_initramfs(
    dir: &Path,
    image: &GuestImage,
    script: &str,
    files: &[(&Path, &str)],
) -> Result<PathBuf> {
    let io = |source| LabError::Spawn {
        command: "initramfs".into(),
        source,
    };
    let extra = dir.join("extra");
    std::fs::create_dir_all(&extra).map_err(io)?;
    std::fs::write(extra.join("test.sh"), format!("#!/bin/sh\n{script}\n")).map_err(io)?;
    run("chmod", &["755", &extra.join("test.sh").to_string_lossy()])?;
    for (host, guest) in files {
        let to = extra.join(guest.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::copy(host, &to).map_err(io)?;
    }
    let archive = dir.join("extra.cpio");
    // Directories before what is in them, as cpio wants.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . -mindepth 1 | sed 's|^[.]/||' | sort | cpio -o -H newc --quiet > '{}'",
            extra.display(),
            archive.display()
        ))
        .output()
        .map_err(io)?;
    if !out.status.success() {
        return Err(LabError::Failed {
            command: "cpio".into(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut initrd = std::fs::read(&image.initramfs).map_err(io)?;
    // The kernel looks for the next archive at a 4-byte boundary (zeros between are skipped).
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend(std::fs::read(&archive).map_err(io)?);
    let path = dir.join("initrd");
    std::fs::write(&path, initrd).map_err(io)?;
    Ok(path)
}
