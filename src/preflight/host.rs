//! Host probes under a configurable root: /proc, /sys, /etc, /dev readers and the `HostCommands` trait.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output of a host command that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// True when the command exited with status 0.
    pub success: bool,
    pub stdout: String,
}

/// Runs host commands (`nvidia-smi`, `containerd --version`, `timedatectl`); tests stub it.
pub trait HostCommands {
    /// Run `program args`; `None` when the program is not installed (or could not start, or timed out).
    fn run(&self, program: &str, args: &[&str]) -> Option<CommandOutput>;
}

/// The real host: programs found on `PATH`, each bounded by a timeout.
#[derive(Clone, Debug)]
pub struct SystemCommands {
    pub timeout: Duration,
}

impl Default for SystemCommands {
    fn default() -> Self {
        SystemCommands {
            timeout: Duration::from_secs(10),
        }
    }
}

impl HostCommands for SystemCommands {
    fn run(&self, program: &str, args: &[&str]) -> Option<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("LC_ALL", "C")
            .spawn()
            .ok()?;
        let mut stdout = child.stdout.take()?;
        // Read on a thread so a chatty command cannot block on a full pipe while we poll for exit.
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < self.timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        };
        let stdout = reader.join().unwrap_or_default();
        Some(CommandOutput {
            success: status.success(),
            stdout,
        })
    }
}

/// Commands answered from a fixed table (tests, and `--root` runs that must not touch the real host).
#[derive(Clone, Debug, Default)]
pub struct FixedCommands {
    /// `"program arg1 arg2"` -> output; a missing key means "not installed".
    pub outputs: BTreeMap<String, CommandOutput>,
}

impl FixedCommands {
    /// Answer `command_line` (program and arguments joined by single spaces) with a successful `stdout`.
    pub fn with(mut self, command_line: &str, stdout: &str) -> Self {
        self.outputs.insert(
            command_line.into(),
            CommandOutput {
                success: true,
                stdout: stdout.into(),
            },
        );
        self
    }
}

impl HostCommands for FixedCommands {
    fn run(&self, program: &str, args: &[&str]) -> Option<CommandOutput> {
        let mut line = program.to_string();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        self.outputs.get(&line).cloned()
    }
}

/// A host filesystem seen from `root` (`/` on a real host, a fake tree in tests).
#[derive(Clone, Debug)]
pub struct HostRoot {
    pub root: PathBuf,
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// The path of host path `p` (absolute on the host) under the root.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    pub fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    pub fn exists(&self, p: &str) -> bool {
        self.path(p).exists()
    }

    /// `/etc/os-release` as key -> unquoted value.
    pub fn os_release(&self) -> Option<BTreeMap<String, String>> {
        let text = self
            .read("/etc/os-release")
            .or_else(|| self.read("/usr/lib/os-release"))?;
        Some(parse_os_release(&text))
    }

    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub fn mem_total(&self) -> Option<u64> {
        parse_meminfo_total(&self.read("/proc/meminfo")?)
    }

    /// Active swap areas from `/proc/swaps`: (device, size in bytes).
    pub fn swaps(&self) -> Option<Vec<(String, u64)>> {
        let text = self.read("/proc/swaps")?;
        Some(
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let kib: u64 = f.get(2)?.parse().ok()?;
                    Some((f[0].to_string(), kib * 1024))
                })
                .collect(),
        )
    }

    /// NVIDIA device nodes (`/dev/nvidia0`, `/dev/nvidiactl`, ...), sorted.
    pub fn nvidia_devices(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("/dev"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("nvidia"))
            .collect();
        v.sort();
        v
    }

    /// Listening TCP sockets from `/proc/net/tcp` and `/proc/net/tcp6`; `None` when neither is readable.
    pub fn tcp_listeners(&self) -> Option<Vec<Listener>> {
        let mut out = Vec::new();
        let mut any = false;
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Some(text) = self.read(file) {
                any = true;
                out.extend(parse_proc_net_tcp(&text));
            }
        }
        any.then_some(out)
    }

    /// Which process owns each socket inode: scans `/proc/<pid>/fd/*` links (`socket:[inode]`).
    /// Processes we may not inspect (other users without root) are skipped.
    pub fn socket_owners(&self) -> BTreeMap<u64, SocketOwner> {
        let mut owners = BTreeMap::new();
        let Ok(procs) = std::fs::read_dir(self.path("/proc")) else {
            return owners;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let mut comm: Option<String> = None;
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = socket_inode(&target) else {
                    continue;
                };
                let name = comm
                    .get_or_insert_with(|| {
                        std::fs::read_to_string(entry.path().join("comm"))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|_| "?".into())
                    })
                    .clone();
                owners.entry(inode).or_insert_with(|| SocketOwner {
                    pid,
                    comm: name,
                    in_pod: in_kubernetes_pod(&entry.path()),
                });
            }
        }
        owners
    }
}

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub pid: u32,
    /// `/proc/<pid>/comm` (at most 15 characters).
    pub comm: String,
    /// True when the process runs in a Kubernetes pod (its cgroup path contains `kubepods`).
    pub in_pod: bool,
}

/// Whether `/proc/<pid>` belongs to a container of a Kubernetes pod (kubelet's `kubepods` cgroups).
fn in_kubernetes_pod(proc_pid: &Path) -> bool {
    std::fs::read_to_string(proc_pid.join("cgroup")).is_ok_and(|c| c.contains("kubepods"))
}

/// One listening TCP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Local address as printed (`127.0.0.1`, `::`).
    pub address: String,
    pub port: u16,
    pub inode: u64,
}

fn socket_inode(target: &Path) -> Option<u64> {
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Parse `/etc/os-release` (`KEY=value`, `KEY="value"`).
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches(|c| c == '"' || c == '\'').to_string(),
            )
        })
        .collect()
}

/// `MemTotal:  32768000 kB` -> bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// LISTEN (state `0A`) entries of a `/proc/net/tcp` or `/proc/net/tcp6` file.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (addr_hex, port_hex) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some(Listener {
                address: decode_proc_addr(addr_hex),
                port,
                inode,
            })
        })
        .collect()
}

/// `/proc/net/tcp` prints addresses as host-order 32-bit words in hex.
fn decode_proc_addr(hex: &str) -> String {
    let words: Vec<u32> = (0..hex.len() / 8)
        .filter_map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => hex.to_string(),
    }
}

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_listeners_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:D0A2 01 00000000:00000000 00:00000000 00000000  1000        0 5 1\n";
        let l = parse_proc_net_tcp(text);
        assert_eq!(
            l,
            vec![Listener {
                address: "127.0.0.1".into(),
                port: 8080,
                inode: 424242
            }]
        );
    }

    #[test]
    fn parses_tcp6_any_address() {
        let text = "hdr\n   0: 00000000000000000000000000000000:2AF8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let l = parse_proc_net_tcp(text);
        assert_eq!(l[0].address, "::");
        assert_eq!(l[0].port, 11000);
    }

    #[test]
    fn parses_meminfo_and_os_release_and_kernel() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       33554432 kB\nMemFree: 1 kB\n"),
            Some(32 << 30)
        );
        let os = parse_os_release(
            "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        assert_eq!(os["VERSION_ID"], "12");
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn fixed_commands_answer_exact_lines() {
        let c = FixedCommands::default().with("containerd --version", "containerd v2.1.0\n");
        assert!(
            c.run("containerd", &["--version"])
                .unwrap()
                .stdout
                .contains("v2.1.0")
        );
        assert!(c.run("nvidia-smi", &[]).is_none());
    }
}
