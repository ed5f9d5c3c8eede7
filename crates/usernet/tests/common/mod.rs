//! The harness for usernet's end-to-end tests: the real binary, a real QEMU
//! guest, a fake upstream resolver and a pcap reader.
//!
//! # How a test runs
//! 1. [`Usernet::spawn`] starts `usernet qemu --socket DIR/usernet.sock ARGS`
//!    with its output in `DIR/usernet.log`, and waits for the socket. Unless
//!    `ARGS` name a `--dns-upstream`, it also starts a [`TestResolver`] and
//!    passes it, so usernet never forwards to the host's real resolver.
//! 2. [`Guest::run`] boots the cached test guest (built by
//!    `scripts/setup.sh` into `.cache/guest/`) connected to that socket. The
//!    scenario, a shell script, travels as `/scenario.sh` in a second gzipped
//!    cpio appended to the cached initramfs. The guest's `/init` prints
//!    [`BOOT_MARKER`], runs the scenario, prints `=== scenario exit N ===`
//!    and powers off; `run` returns the console text.
//! 3. The test asserts on that text, on [`Usernet::log`], on the resolver's
//!    counters or on a pcap written with `--pcap` (see [`read_pcap`]).
//!
//! The guest's udhcpc default script configures `eth0` and prints the lease
//! as `lease.FIELD=VALUE` lines; [`lease`] parses them. Busybox 1.35's
//! `wget -T SECS` segfaults: bound a guest command with `timeout SECS CMD`.
//!
//! # Network safety
//! These tests must never reach past this machine. `scripts/test.sh` runs
//! them inside a fresh network namespace (`unshare --net`) holding only
//! `lo`; [`Usernet::spawn`] refuses to run anywhere else.
//!
//! Set `USERNET_TEST_KEEP=1` to keep the temporary directories (logs,
//! pcaps, initrds) and `USERNET_TEST_ACCEL=kvm|tcg` to override the
//! accelerator probed by `scripts/setup.sh`.
#![allow(dead_code)] // Every test file uses a different part of the harness.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the guest's `/init` prints once the network modules are loaded and
/// `eth0` is up, before the scenario runs.
pub const BOOT_MARKER: &str = "=== usernet guest up ===";

/// What the guest's `/init` prints after a scenario that exited with 0.
pub const SCENARIO_OK: &str = "=== scenario exit 0 ===";

/// A scenario line that gets a DHCP lease asking for the MTU, search list
/// and hostname options, configures `eth0` and prints `lease.*` lines.
pub const DHCP: &str = "udhcpc -i eth0 -O mtu -O search -O hostname -n -q -t 5 -T 2\n";

/// The address [`TestResolver`] answers for every `*.usernet.test` name: in
/// the guest's own default subnet, so it never leads anywhere real.
pub const TEST_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 77);

/// How long [`Usernet::spawn`] waits for the listening socket.
const SOCKET_WAIT: Duration = Duration::from_secs(20);

/// Where `scripts/setup.sh` caches the guest kernel and initramfs.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/guest")
}

/// Panics unless this process runs in a network namespace holding only
/// loopback interfaces, as `scripts/test.sh` sets up.
pub fn assert_isolated_netns() {
    // /proc/net/dev is per network namespace (/sys/class/net shows the
    // namespace /sys was mounted in).
    let ifaces: Vec<String> = fs::read_to_string("/proc/net/dev")
        .expect("read /proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .filter(|name| name != "lo")
        .collect();
    assert!(
        ifaces.is_empty(),
        "refusing to run a network test outside an isolated network namespace \
         (found interfaces {ifaces:?}); run scripts/test.sh, or: unshare --net -- sh -c \
         'ip link set lo up && sysctl -qw net.ipv4.ping_group_range=\"0 2147483647\" && \
         cargo test --offline'"
    );
}

/// A temporary directory under [`std::env::temp_dir`], removed on drop
/// unless `USERNET_TEST_KEEP` is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/usernet-test-LABEL-PID-N-NANOS`.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "usernet-test-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create test tempdir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("USERNET_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Memory use of a process, from `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rss {
    /// Current resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

/// A running `usernet qemu` process; killed (by PID) on drop.
pub struct Usernet {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
    resolver: Option<TestResolver>,
}

impl Usernet {
    /// Starts `usernet qemu --socket DIR/usernet.sock ARGS` and waits until
    /// the socket exists. Adds `--dns-upstream` of a fresh [`TestResolver`]
    /// unless `args` have one. Panics (with the log) if usernet exits or
    /// the socket does not appear in time.
    pub fn spawn(args: &[&str]) -> Usernet {
        assert_isolated_netns();
        let dir = TempDir::new("usernet");
        let socket = dir.join("usernet.sock");
        let log = dir.join("usernet.log");
        let resolver = if args.contains(&"--dns-upstream") {
            None
        } else {
            Some(TestResolver::start())
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_usernet"));
        cmd.arg("qemu").arg("--socket").arg(&socket).args(args);
        if let Some(r) = &resolver {
            cmd.arg("--dns-upstream").arg(r.upstream_arg());
        }
        let out = File::create(&log).expect("create usernet.log");
        let err = out.try_clone().expect("dup usernet.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start usernet");
        let mut un = Usernet {
            child,
            dir,
            socket,
            log,
            resolver,
        };
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            if fs::metadata(&un.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return un;
            }
            if let Ok(Some(status)) = un.child.try_wait() {
                panic!(
                    "usernet {args:?} exited with {status} before listening; log:\n{}",
                    un.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "usernet {args:?} did not create {} within {SOCKET_WAIT:?}; log:\n{}",
                    un.socket.display(),
                    un.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The unix socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// This instance's temporary directory (socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The resolver started for this instance, if `spawn` started one.
    pub fn resolver(&self) -> Option<&TestResolver> {
        self.resolver.as_ref()
    }

    /// Everything usernet wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("usernet exited with {status}; log:\n{}", self.log());
        }
    }

    /// Current and peak resident set size. Panics if the process is gone.
    pub fn rss(&self) -> Rss {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of usernet");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        Rss {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }

    /// Stops usernet with SIGTERM (so it can flush a pcap), then SIGKILL
    /// after 5 s; returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for usernet")
    }
}

impl Drop for Usernet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sh -c SCRIPT` under `usernet ns` with `upstream` as its DNS
/// upstream (bounded by 60 s); its exit status and stdout+stderr.
pub fn ns_script(upstream: &str, script: &str) -> (ExitStatus, String) {
    let out = usernet_output(
        &["ns", "--dns-upstream", upstream, "--", "sh", "-c", script],
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Runs `usernet ARGS` to completion (killing it after `timeout`) and
/// returns its output. For command-line tests; no guest, no socket wait.
pub fn usernet_output(args: &[&str], timeout: Duration) -> Output {
    let dir = TempDir::new("cli");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("start usernet");
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "usernet {args:?} still running after {timeout:?}; stderr:\n{}",
            fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    }
}

/// Waits up to `timeout` for `child`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A file added to the guest's root next to `/scenario.sh`.
pub struct GuestFile<'a> {
    /// Absolute path in the guest, e.g. `/etc/answer`.
    pub path: &'a str,
    /// Contents.
    pub data: &'a [u8],
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
}

/// The QEMU test guest.
pub struct Guest;

impl Guest {
    /// Boots the guest on `socket` running `scenario` as `/scenario.sh`,
    /// kills QEMU after `timeout`, and returns the console output (`\r`
    /// stripped). Panics, with the output, if the guest did not boot.
    pub fn run(socket: &Path, scenario: &str, timeout: Duration) -> String {
        Guest::run_with_files(socket, scenario, &[], timeout)
    }

    /// [`Guest::run`] with extra files in the guest's root file system.
    pub fn run_with_files(
        socket: &Path,
        scenario: &str,
        files: &[GuestFile<'_>],
        timeout: Duration,
    ) -> String {
        Guest::run_on(&Nic::Stream(socket), scenario, files, timeout, &mut |_| {})
    }

    /// [`Guest::run_with_files`] with the NIC attached as `nic`; `started`
    /// is called with QEMU's pid once it is spawned (it may still be
    /// execing through a wrapper).
    pub fn run_on(
        nic: &Nic<'_>,
        scenario: &str,
        files: &[GuestFile<'_>],
        timeout: Duration,
        started: &mut dyn FnMut(u32),
    ) -> String {
        let boot = Boot::new(scenario, files);
        let console = boot.dir.join("console");
        let started_at = Instant::now();
        let mut child = boot.spawn(nic, &[], &console);
        started(child.id());
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let output = fs::read_to_string(&console)
            .unwrap_or_default()
            .replace('\r', "");
        eprintln!(
            "--- guest console ({:.1} s, {}) ---\n{output}\n--- end of guest console ---",
            started_at.elapsed().as_secs_f64(),
            match status {
                Some(s) => format!("qemu exited with {s}"),
                None => format!("killed after {timeout:?}"),
            }
        );
        assert!(
            output.contains(BOOT_MARKER),
            "the guest did not boot (no {BOOT_MARKER:?}); console:\n{output}"
        );
        output
    }
}

/// A guest ready to boot: the cached kernel and an initramfs holding the
/// scenario, in a temporary directory. [`Guest::run_on`] is one boot;
/// tests that start QEMU more than once on the same guest (migration) use
/// this directly.
pub struct Boot {
    /// Holds the initrd (and, by convention, consoles).
    pub dir: TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
}

impl Boot {
    /// Builds the initrd for `scenario` and `files`.
    pub fn new(scenario: &str, files: &[GuestFile<'_>]) -> Boot {
        let guest = guest_dir();
        let kernel = guest.join("vmlinuz");
        let base = guest.join("initramfs.cpio.gz");
        assert!(
            kernel.exists() && base.exists(),
            "no test guest in {}: run scripts/setup.sh first",
            guest.display()
        );
        let dir = TempDir::new("guest");

        // The per-test cpio, gzipped and appended to the cached initramfs.
        let mut cpio = Cpio::default();
        cpio.file("scenario.sh", scenario.as_bytes(), 0o755);
        for f in files {
            cpio.file_with_parents(f.path, f.data, f.mode);
        }
        let extra = dir.join("extra.cpio");
        fs::write(&extra, cpio.finish()).expect("write extra.cpio");
        let gz = Command::new("gzip")
            .arg("-c")
            .arg(&extra)
            .output()
            .expect("run gzip");
        assert!(gz.status.success(), "gzip failed");
        let mut initrd = fs::read(&base).expect("read cached initramfs");
        initrd.extend_from_slice(&gz.stdout);
        let initrd_path = dir.join("initrd");
        fs::write(&initrd_path, initrd).expect("write initrd");
        Boot {
            dir,
            kernel,
            initrd: initrd_path,
        }
    }

    /// Starts QEMU with the NIC `nic` and `extra` arguments, its console
    /// (stdout and stderr) to the file `console`.
    pub fn spawn(&self, nic: &Nic<'_>, extra: &[String], console: &Path) -> Child {
        let mut qemu: Vec<std::ffi::OsString> = vec!["qemu-system-x86_64".into()];
        for a in ["-accel", &accel(), "-m", "256", "-nographic", "-no-reboot"] {
            qemu.push(a.into());
        }
        qemu.push("-kernel".into());
        qemu.push(self.kernel.clone().into());
        qemu.push("-initrd".into());
        qemu.push(self.initrd.clone().into());
        qemu.push("-append".into());
        qemu.push("console=ttyS0 quiet panic=-1".into());
        qemu.extend(extra.iter().map(Into::into));
        let mut cmd = match nic {
            Nic::Stream(socket) | Nic::Switch { socket, .. } => {
                let mut netdev =
                    std::ffi::OsString::from("stream,id=n0,server=off,addr.type=unix,addr.path=");
                netdev.push(socket);
                qemu.extend(["-netdev".into(), netdev]);
                let device = match nic {
                    Nic::Switch { mac, .. } => format!("virtio-net-pci,netdev=n0,mac={mac}"),
                    _ => "virtio-net-pci,netdev=n0".into(),
                };
                qemu.extend(["-device".into(), device.into()]);
                let mut cmd = Command::new(&qemu[0]);
                cmd.args(&qemu[1..]);
                cmd
            }
            Nic::User {
                options,
                lib_dir,
                resolv_conf,
                args,
            } => {
                qemu.extend(["-nic".into(), format!("user,{options}").into()]);
                qemu.extend(args.iter().map(Into::into));
                // unshare and sh exec, so the child's pid becomes QEMU's.
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
                    .arg("sh")
                    .arg(resolv_conf)
                    .args(&qemu)
                    .env("LD_LIBRARY_PATH", lib_dir);
                cmd
            }
        };
        let console_out = File::create(console).expect("create console file");
        let console_err = console_out.try_clone().expect("dup console file");
        cmd.stdin(Stdio::null())
            .stdout(console_out)
            .stderr(console_err)
            .spawn()
            .expect("start qemu-system-x86_64")
    }
}

/// How [`Guest::run_on`] attaches the guest's NIC.
pub enum Nic<'a> {
    /// To usernet's socket (`-netdev stream`).
    Stream(&'a Path),
    /// To usernet's socket with this MAC (one of several guests on its
    /// switch).
    Switch {
        /// usernet's socket.
        socket: &'a Path,
        /// The NIC's MAC, e.g. `52:54:00:00:00:0a`.
        mac: &'a str,
    },
    /// QEMU's own `-nic user,OPTIONS`, with `libslirp.so.0` loaded from
    /// `lib_dir` (`LD_LIBRARY_PATH`), in a private mount namespace where
    /// `/etc/resolv.conf` is `resolv_conf`; `args` go to QEMU as well.
    User {
        /// `-nic user,` options, e.g. `model=virtio-net-pci,hostfwd=...`.
        options: &'a str,
        /// Directory holding the `libslirp.so.0` to load.
        lib_dir: &'a Path,
        /// The file bind-mounted on `/etc/resolv.conf`.
        resolv_conf: &'a Path,
        /// Extra QEMU arguments (a monitor, ...).
        args: &'a [String],
    },
}

/// The accelerator: `USERNET_TEST_ACCEL`, else what `scripts/setup.sh`
/// probed into `.cache/guest/accel`, else TCG.
fn accel() -> String {
    if let Ok(a) = std::env::var("USERNET_TEST_ACCEL") {
        return a;
    }
    match fs::read_to_string(guest_dir().join("accel")) {
        Ok(a) if a.trim() == "kvm" => "kvm".into(),
        _ => "tcg".into(),
    }
}

/// The last lease the guest's udhcpc script printed, as field → value
/// (`ip`, `subnet`, `mask`, `router`, `dns`, `domain`, `mtu`, `search`,
/// `hostname`, `lease`, `serverid`, `broadcast`, `configured`).
pub fn lease(console: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in console.lines() {
        if let Some((k, v)) = line.strip_prefix("lease.").and_then(|l| l.split_once('=')) {
            if k == "ip" {
                fields.clear();
            }
            fields.insert(k.to_string(), v.trim().to_string());
        }
    }
    fields
}

/// A minimal writer of `newc` cpio archives, the format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name_len,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A regular file at `path` (relative to the root).
    fn file(&mut self, path: &str, data: &[u8], perm: u32) {
        self.entry(
            path.trim_start_matches('/'),
            0o100000 | (perm & 0o7777),
            data,
        );
    }

    /// A regular file, preceded by entries for its parent directories.
    fn file_with_parents(&mut self, path: &str, data: &[u8], perm: u32) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for c in &components[..components.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if !self.dirs.contains(&parent) {
                self.dirs.push(parent.clone());
                let dir = parent.clone();
                self.entry(&dir, 0o040755, &[]);
            }
        }
        self.file(path, data, perm);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// A fake upstream resolver on 127.0.0.1 (UDP and TCP, same port):
/// answers A queries for `usernet.test` and its subdomains with a fixed
/// address ([`TEST_ANSWER`] by default), other types for those names with
/// an empty NOERROR, and everything else with NXDOMAIN.
pub struct TestResolver {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    names: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestResolver {
    /// Starts a resolver answering [`TEST_ANSWER`].
    pub fn start() -> TestResolver {
        TestResolver::start_with(TEST_ANSWER)
    }

    /// Starts a resolver answering `answer` for `*.usernet.test`.
    pub fn start_with(answer: Ipv4Addr) -> TestResolver {
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("bind the test resolver's UDP and TCP sockets on one port");
        let addr = udp.local_addr().expect("resolver address");
        let queries = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));

        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set resolver timeout");
        let (q, n, s) = (queries.clone(), names.clone(), stop.clone());
        let udp_thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((reply, name)) = dns_answer(&buf[..len], answer) {
                    n.lock().expect("names lock").push(name);
                    q.fetch_add(1, Ordering::Relaxed);
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });

        tcp.set_nonblocking(true).expect("nonblocking listener");
        let (q, n, s) = (queries.clone(), names.clone(), stop.clone());
        let tcp_thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => serve_dns_tcp(conn, answer, &q, &n),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });

        TestResolver {
            addr,
            queries,
            names,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// The port (UDP and TCP).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `--dns-upstream`.
    pub fn upstream_arg(&self) -> String {
        self.addr.to_string()
    }

    /// How many queries it answered (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }

    /// The (lower-cased name, query type) of every query answered.
    pub fn names(&self) -> Vec<(String, u16)> {
        self.names.lock().expect("names lock").clone()
    }
}

impl Drop for TestResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves length-prefixed DNS queries on one TCP connection until EOF.
fn serve_dns_tcp(
    mut conn: TcpStream,
    answer: Ipv4Addr,
    queries: &AtomicUsize,
    names: &Mutex<Vec<(String, u16)>>,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut msg).is_err() {
            return;
        }
        let Some((reply, name)) = dns_answer(&msg, answer) else {
            return;
        };
        names.lock().expect("names lock").push(name);
        queries.fetch_add(1, Ordering::Relaxed);
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = reply_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if conn.write_all(&framed).is_err() {
            return;
        }
    }
}

/// Builds the reply to a one-question DNS query, or `None` if `query` is
/// not one. Returns the reply and the (lower-cased name, type) asked.
pub fn dns_answer(query: &[u8], answer: Ipv4Addr) -> Option<(Vec<u8>, (String, u16))> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // QNAME: uncompressed labels, bounded by RFC 1035's limits.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 || pos + len > query.len() || pos > 255 + 12 {
            return None;
        }
        labels.push(String::from_utf8_lossy(&query[pos..pos + len]).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(pos + 2)?, *query.get(pos + 3)?]);
    let question_end = pos + 4;
    let name = labels.join(".");
    let ours = name == "usernet.test" || name.ends_with(".usernet.test");
    let give_a = ours && qtype == 1 && qclass == 1;
    let rcode: u8 = if ours { 0 } else { 3 };

    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[0..2]); // id
    // QR, the query's opcode and RD, AA; RA and the rcode.
    reply.push(0x80 | (query[2] & 0x78) | 0x04 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&[0, 1, 0, u8::from(give_a), 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..question_end]);
    if give_a {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&answer.octets());
    }
    Some((reply, (name, qtype)))
}

/// The frames of a pcap or pcapng file, in order.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut frames = Vec::new();
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&bytes[..])
            .unwrap_or_else(|e| panic!("{} is not a pcapng file: {e}", path.display()));
        while let Some(block) = reader.next_block() {
            match block.unwrap_or_else(|e| panic!("bad block in {}: {e}", path.display())) {
                pcap_file::pcapng::Block::EnhancedPacket(p) => frames.push(p.data.to_vec()),
                pcap_file::pcapng::Block::SimplePacket(p) => frames.push(p.data.to_vec()),
                _ => {}
            }
        }
    } else {
        let mut reader = pcap_file::pcap::PcapReader::new(&bytes[..])
            .unwrap_or_else(|e| panic!("{} is not a pcap file: {e}", path.display()));
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap_or_else(|e| panic!("bad packet in {}: {e}", path.display()));
            frames.push(packet.data.to_vec());
        }
    }
    frames
}

/// An IPv4/UDP datagram found in an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp<'a> {
    /// IPv4 source address.
    pub src: Ipv4Addr,
    /// IPv4 destination address.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub sport: u16,
    /// UDP destination port.
    pub dport: u16,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// Parses an Ethernet II frame holding an unfragmented IPv4/UDP datagram.
pub fn udp_in_frame(frame: &[u8]) -> Option<Udp<'_>> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..total)?;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = ip.get(ihl..)?;
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let ulen = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let payload = udp.get(8..ulen.max(8))?;
    Some(Udp {
        src,
        dst,
        sport,
        dport,
        payload,
    })
}

/// The DHCP message type (option 53: 1 DISCOVER, 2 OFFER, 3 REQUEST,
/// 5 ACK, 6 NAK, ...) of a BOOTP payload, if it has one.
pub fn dhcp_message_type(bootp: &[u8]) -> Option<u8> {
    if bootp.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut opts = bootp.get(240..)?;
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => opts = rest,
            255 => return None,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                if code == 53 {
                    return value.first().copied();
                }
                opts = &rest[usize::from(len)..];
            }
        }
    }
    None
}
pub mod bulk;
pub mod ns;

/// The stack's counters as usernet logs them when it stops (the last
/// "stack stopped" line of its log), if it did.
pub fn stopped_counters(log: &str) -> Option<&str> {
    log.lines().rev().find(|l| l.contains("stack stopped"))
}

/// The value of `name: N` in logged `Counters`.
pub fn counter(counters: &str, name: &str) -> Option<u64> {
    let (_, rest) = counters.split_once(&format!("{name}: "))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
