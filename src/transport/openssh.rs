//! The OpenSSH backend: the system `ssh` client, for operators who need what only it has
//! (ProxyJump bastions, FIDO keys, SSH certificates, their full `~/.ssh/config`).
//!
//! Always `BatchMode=yes` (never a prompt) and `StrictHostKeyChecking=yes` against the given
//! known_hosts and nothing else (no global known_hosts files, no `KnownHostsCommand`, no
//! `CheckHostIP`: the built-in transport trusts exactly the same keys), with `UpdateHostKeys=no`
//! so the file is never modified. `@cert-authority` lines in it work here (SSH host
//! certificates); the built-in transport refuses them by name.
//!
//! One connection per session: `ssh -M -N` runs as our child in the foreground (never forked to
//! the background, whatever the user's `ControlPersist` says), its control socket in a private
//! 0700 directory this transport creates and removes; the host key is checked and the login
//! done once, and every command is multiplexed over it. A thread per session spawns and reaps
//! the master, which dies with it (`PR_SET_PDEATHSIG`), so no master outlives hapki; the session
//! ends it with a signal, and a command on a session whose master died fails, naming the node.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::builtin::{probe_host_key, unknown_host_error};
use super::known_hosts;
use super::{
    output_error, remote_command, RemoteOutput, Session, StderrBuf, Target, Transport,
    TransportError,
};

/// The system-`ssh` transport. Holds a private 0700 directory for the control sockets.
pub struct OpensshTransport {
    ssh: PathBuf,
    /// Shared with every session, so it outlives their masters.
    control_dir: Arc<tempfile::TempDir>,
    counter: AtomicUsize,
    /// Whether this `ssh` knows `KnownHostsCommand` (OpenSSH 8.5+), so it can be turned off.
    khc: bool,
    /// Whether it knows `ForkAfterAuthentication` (8.7+), so a configuration cannot turn it on.
    fork_opt: bool,
}

impl OpensshTransport {
    /// Uses `ssh` from `PATH`.
    pub fn new() -> Result<OpensshTransport, TransportError> {
        OpensshTransport::with_ssh("ssh")
    }

    /// Uses the given `ssh` binary.
    pub fn with_ssh(ssh: impl Into<PathBuf>) -> Result<OpensshTransport, TransportError> {
        // Control socket paths must stay short (sun_path is 108 bytes): a directory in /tmp,
        // created 0700 (tempfile's default follows the umask: 0755), so no other user reaches a
        // socket through which commands run on the nodes.
        use std::os::unix::fs::PermissionsExt;
        let control_dir = tempfile::Builder::new()
            .prefix("hapki-ssh.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in("/tmp")
            .map_err(|e| TransportError::Io {
                host: "localhost".to_owned(),
                what: "creating a control directory".to_owned(),
                source: e,
            })?;
        let ssh = ssh.into();
        // ForkAfterAuthentication came after KnownHostsCommand: one probe when both are known.
        let fork_opt = knows(&ssh, &["KnownHostsCommand=none", "ForkAfterAuthentication=no"]);
        let khc = fork_opt || knows(&ssh, &["KnownHostsCommand=none"]);
        let control_dir = Arc::new(control_dir);
        Ok(OpensshTransport { ssh, control_dir, counter: AtomicUsize::new(0), khc, fork_opt })
    }

    /// The private directory holding the control sockets (0700, removed when the transport and
    /// every session it opened are gone).
    pub fn control_dir(&self) -> &Path {
        self.control_dir.path()
    }
}

/// Whether `ssh` accepts these `-o` options (an older one refuses the whole command line over an
/// unknown option, and has no such setting to turn off).
fn knows(ssh: &Path, options: &[&str]) -> bool {
    let mut c = Command::new(ssh);
    c.args(["-F", "/dev/null"]);
    for o in options {
        c.args(["-o", o]);
    }
    c.args(["-G", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The options every `ssh` run gets. Host keys: exactly the given known_hosts file is trusted,
/// as the built-in transport trusts it: no global files (`/etc/ssh/ssh_known_hosts`, `…2`), no
/// `KnownHostsCommand` (`khc`: when this ssh has it), no IP-address entries, never an update.
fn common_args(t: &Target, khc: bool) -> Result<Vec<String>, TransportError> {
    if t.host.starts_with('-') || t.host.is_empty() {
        return Err(TransportError::Invalid(format!(
            "refusing host {:?}: not a host name",
            t.host
        )));
    }
    let mut a: Vec<String> = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "GlobalKnownHostsFile=none",
        "-o",
        "CheckHostIP=no",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ServerAliveCountMax=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if khc {
        a.push("-o".into());
        a.push("KnownHostsCommand=none".into());
    }
    a.push("-o".into());
    a.push(format!("UserKnownHostsFile={}", config_path(&t.known_hosts)?));
    a.push("-o".into());
    a.push(format!("ConnectTimeout={}", t.connect_timeout.as_secs().max(1)));
    a.push("-o".into());
    a.push(format!("ServerAliveInterval={}", t.keepalive.as_secs().max(1)));
    if let Some(p) = t.port {
        a.push("-p".into());
        a.push(p.to_string());
    }
    if let Some(u) = &t.user {
        a.push("-l".into());
        a.push(u.clone());
    }
    for id in &t.identity {
        a.push("-o".into());
        a.push(format!("IdentityFile={}", config_path(id)?));
    }
    Ok(a)
}

/// `path` as one ssh_config value that names exactly that file: absolute, double-quoted (an
/// unquoted space would make `UserKnownHostsFile` two files, both trusted) and `%` doubled (ssh
/// expands `%h`, `%d`… in file names). A path ssh cannot be told (a `"` or a line break in it)
/// is refused.
fn config_path(path: &Path) -> Result<String, TransportError> {
    let abs = std::path::absolute(path).map_err(|e| TransportError::Io {
        host: "localhost".to_owned(),
        what: format!("resolving {}", path.display()),
        source: e,
    })?;
    let Some(text) = abs.to_str().filter(|s| !s.contains(['"', '\n', '\r'])) else {
        return Err(TransportError::Invalid(format!(
            "{}: the ssh client cannot be given this path (a quote, line break or invalid \
             UTF-8 in it); rename it, or use --transport builtin",
            path.display()
        )));
    };
    Ok(format!("\"{}\"", text.replace('%', "%%")))
}

/// OpenSSH's default cipher set with AES-GCM first: through libcrypto with AES-NI it costs a
/// fraction of ChaCha20-Poly1305 per byte, which is what pushing GiB artifacts is bound by.
const GCM_FIRST: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

/// The cipher list to ask for, given the effective one (`ssh -G`'s `ciphers` line): GCM first
/// when the user's configuration offers exactly OpenSSH's default set, in any order. A set that
/// was narrowed or widened (a crypto policy, a hardened ssh_config) is the site's choice and is
/// left alone.
fn gcm_first(effective: &str) -> Option<&'static str> {
    fn set(s: &str) -> std::collections::BTreeSet<&str> {
        s.split(',').map(str::trim).collect()
    }
    (set(effective) == set(GCM_FIRST)).then_some(GCM_FIRST)
}

impl OpensshTransport {
    /// The options of every `ssh` that logs in (a master, or a one-command client).
    fn login_args(&self, target: &Target) -> Result<Vec<String>, TransportError> {
        let mut a = common_args(target, self.khc)?;
        if let Some(c) = target.bulk.then(|| self.gcm_first(target)).flatten() {
            a.extend(["-o".to_owned(), format!("Ciphers={c}")]);
        }
        // In the foreground, as our child: no ControlPersist (it would fork a master away),
        // nor ForkAfterAuthentication, whatever the user's configuration says.
        if self.fork_opt {
            a.extend(["-o", "ForkAfterAuthentication=no"].map(String::from));
        }
        Ok(a)
    }

    /// [`gcm_first`] for what `ssh -G` says this target's configuration is; `None` if it cannot
    /// tell.
    fn gcm_first(&self, target: &Target) -> Option<&'static str> {
        let out = Command::new(&self.ssh)
            .args(common_args(target, self.khc).ok()?)
            .arg("-G")
            .arg(&target.host)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().find_map(|l| l.strip_prefix("ciphers ")).and_then(gcm_first)
    }
}

impl Transport for OpensshTransport {
    fn connect(&self, target: &Target) -> Result<Box<dyn Session>, TransportError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let socket = self.control_dir.path().join(format!("cm-{n}"));
        let log = self.control_dir.path().join(format!("cm-{n}.log"));
        let io_err = |what: String| {
            let host = target.host.clone();
            move |source| TransportError::Io { host, what, source }
        };
        let log_file = std::fs::File::create(&log).map_err(io_err("creating a log file".into()))?;
        let mut master = Command::new(&self.ssh);
        master
            .args(self.login_args(target)?)
            .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            .arg(&target.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let what = format!("running {}", self.ssh.display());
        let master = Master::spawn(master).map_err(io_err(what))?;
        let mut client_args = common_args(target, self.khc)?;
        client_args.extend(["-o".to_owned(), "ControlMaster=no".to_owned(), "-o".to_owned()]);
        client_args.push(format!("ControlPath={}", socket.display()));
        let session = OpensshSession {
            ssh: self.ssh.clone(),
            target: target.clone(),
            client_args,
            mux: Some(Mux { socket, log, master }),
            _dir: Arc::clone(&self.control_dir),
        };
        session.wait_logged_in()?;
        Ok(Box::new(session))
    }

    /// Nothing runs until the command does: then one `ssh` logs in and runs it, and ends with
    /// it. No control master, no multiplexed client: about 10 ms of CPU fewer per
    /// node than [`Transport::connect`] (`scripts/bench-audit`). A login that prints nothing
    /// within the connect timeout and a minute is ended, as a master's is.
    fn connect_once(&self, target: &Target) -> Result<Box<dyn Session>, TransportError> {
        let mut client_args = self.login_args(target)?;
        // A user's ControlMaster/ControlPath must neither make it a master nor route it over
        // another connection.
        client_args.extend(["-o", "ControlMaster=no", "-o", "ControlPath=none"].map(String::from));
        Ok(Box::new(OpensshSession {
            ssh: self.ssh.clone(),
            target: target.clone(),
            client_args,
            mux: None,
            _dir: Arc::clone(&self.control_dir),
        }))
    }
}

/// How long a login may take after the TCP connection (bounded by ConnectTimeout): the key
/// exchange, the host-key check and the authentication (an agent, a hardware key).
const LOGIN_GRACE: Duration = Duration::from_secs(60);

/// A control master (`ssh -M -N`) running as our child. Its own thread spawns it (so that
/// `PR_SET_PDEATHSIG` ties the master to that thread, which lives until the master has exited,
/// and to the process) and reaps it; `exited` is set before the pid is reaped, under its lock,
/// so a signal sent while it is unset always reaches this master, never a reused pid.
struct Master {
    pid: libc::pid_t,
    exited: Arc<Mutex<Option<ExitStatus>>>,
    waiter: Option<std::thread::JoinHandle<()>>,
}

impl Master {
    fn spawn(mut cmd: Command) -> std::io::Result<Master> {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl, getppid and kill are async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would signal us.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            })
        };
        // Its own process group, signalled as one: an `ssh` on PATH that is a wrapper running
        // the real client as its child (not `exec`) must not leave that client behind.
        cmd.process_group(0);
        let exited = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&exited);
        let waiter = std::thread::Builder::new()
            .name("ssh-master".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                let _ = tx.send(Ok(child.id() as libc::pid_t));
                wait_no_reap(child.id() as libc::pid_t);
                let mut exited = state.lock().unwrap_or_else(|p| p.into_inner());
                *exited = Some(child.wait().unwrap_or_else(|_| ExitStatus::from_raw(255 << 8)));
            })?;
        let pid = rx.recv().map_err(|_| std::io::Error::other("ssh master thread ended"))??;
        Ok(Master { pid, exited, waiter: Some(waiter) })
    }

    /// Whether the master is still running (not yet seen exiting).
    fn alive(&self) -> bool {
        self.exited.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Sends `sig` to the master's process group unless the master has exited.
    fn signal(&self, sig: libc::c_int) {
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        if exited.is_none() {
            // SAFETY: our child leads this group and is not reaped while the lock is held (see
            // the struct), so the group id cannot have been reused.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }
}

/// Blocks until `pid` (our child) has exited, leaving it to be reaped.
fn wait_no_reap(pid: libc::pid_t) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on our own child with WNOWAIT only reads its state.
        let rc = unsafe {
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

impl Drop for Master {
    /// Ends the master (it says goodbye to the node, closes the connection and removes its
    /// socket). SIGTERM, sent again every 20 ms: one that lands just before ssh goes back to
    /// waiting is only seen at its next wake-up (up to the keepalive interval); SIGKILL if it is
    /// still there after 3 s.
    fn drop(&mut self) {
        let start = Instant::now();
        while self.alive() && start.elapsed() < Duration::from_secs(3) {
            self.signal(libc::SIGTERM);
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(2));
                if !self.alive() {
                    break;
                }
            }
        }
        self.signal(libc::SIGKILL);
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
    }
}

struct OpensshSession {
    ssh: PathBuf,
    target: Target,
    /// The options of each command's `ssh` (before the host and the command).
    client_args: Vec<String>,
    /// The control master every command goes through; `None`: each command logs in itself.
    mux: Option<Mux>,
    /// The control directory stays while a session may use it.
    _dir: Arc<tempfile::TempDir>,
}

/// A session's control master, its socket and its stderr.
struct Mux {
    socket: PathBuf,
    log: PathBuf,
    master: Master,
}

impl OpensshSession {
    /// Waits until the master listens on its socket (logged in), or fails as ssh failed.
    fn wait_logged_in(&self) -> Result<(), TransportError> {
        use std::os::unix::fs::FileTypeExt;
        let Some(Mux { socket, master, .. }) = &self.mux else { return Ok(()) };
        let limit = self.target.connect_timeout + LOGIN_GRACE;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let listening =
                std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
            if listening && master.alive() {
                return Ok(());
            }
            if !master.alive() {
                return Err(map_failure(&self.target, &self.master_log()));
            }
            if start.elapsed() >= limit {
                master.signal(libc::SIGTERM);
                return Err(TransportError::Timeout {
                    host: self.target.host.clone(),
                    what: "logging in".to_owned(),
                    after: limit,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// Whether a client that failed with `stderr` lost its master: the master has exited, or
    /// the client says the mux connection broke and the master exits within a moment. Never
    /// for a session without one.
    fn master_died(&self, stderr: &str) -> bool {
        let Some(mux) = &self.mux else { return false };
        let start = Instant::now();
        while mux.master.alive() {
            if !stderr.contains("mux_client_") || start.elapsed() > Duration::from_millis(500) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// What the master printed (escaped for display).
    fn master_log(&self) -> String {
        let raw = self.mux.as_ref().and_then(|m| std::fs::read(&m.log).ok()).unwrap_or_default();
        String::from_utf8_lossy(&super::escape_stderr(&raw)).into_owned()
    }

    /// The error for a command on a session whose master has exited: ssh's own reason when its
    /// log names one, else that the connection ended.
    fn master_gone(&self) -> TransportError {
        let log = self.master_log();
        if looks_like_ssh_failure(&log) {
            return map_failure(&self.target, &log);
        }
        let last = log.lines().rev().map(str::trim).find(|l| !l.is_empty());
        TransportError::Protocol {
            host: self.target.host.clone(),
            what: "running a command".to_owned(),
            message: format!(
                "the connection to the node ended (its ssh master exited{}); check the node and \
                 the network, and run again",
                last.map(|l| format!(": {l}")).unwrap_or_default()
            ),
        }
    }
}

impl Session for OpensshSession {
    fn target(&self) -> &Target {
        &self.target
    }

    fn run_streaming(
        &mut self,
        script: &str,
        args: &[&str],
        stdin: &mut (dyn Read + Send),
        stdout: &mut (dyn Write + Send),
    ) -> Result<RemoteOutput, TransportError> {
        let cmd = remote_command(script, args, self.target.become_)?;
        if self.mux.as_ref().is_some_and(|m| !m.master.alive()) {
            return Err(self.master_gone());
        }
        let mut child = self.spawn_client(cmd)?;
        let (Some(mut cin), Some(mut cout), Some(mut cerr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(TransportError::Invalid("ssh child has no pipes".to_owned()));
        };
        // Set once the command's output has ended: input that is still "not ready yet"
        // (`Interrupted`, see push's exchange) will never be wanted, so the feeder stops.
        let output_done = AtomicBool::new(false);
        let output_done = &output_done;
        // Ends the ssh client, and with it the command on the node, at once: a sink refused
        // more output, or nothing moved either way for idle_timeout. The child is reaped only
        // after the scope, so its pid cannot have been reused meanwhile.
        // The master holds copies of the client's pipes (the mux passes them over), so the
        // master is told to exit too: that closes them, and the connection, at once.
        let pid = child.id() as libc::pid_t;
        let killed = AtomicBool::new(false);
        let kill = &|| {
            if killed.swap(true, Ordering::AcqRel) {
                return;
            }
            // SAFETY: signalling our own child, not yet reaped (see above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if let Some(m) = &self.mux {
                m.master.signal(libc::SIGTERM);
            }
        };
        // A command that logs in itself is bounded as a master's login is.
        let login = self.mux.is_none().then_some(self.target.connect_timeout + LOGIN_GRACE);
        let watch = &Watch::new(self.target.idle_timeout, login);
        let (touch, heard) = (&|| watch.touch(), &|| watch.heard());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let ended = std::thread::scope(|s| {
            let feeder = s.spawn(move || feed_input(stdin, &mut cin, output_done, touch));
            let errs = s.spawn(move || {
                let mut b = StderrBuf::new();
                let r = pump(&mut cerr, &mut b, heard);
                if r.is_err() {
                    kill();
                }
                (b.into_vec(), r)
            });
            s.spawn(move || watch.run(done_rx, kill));
            let out = pump(&mut cout, stdout, heard);
            if out.is_err() {
                kill();
            }
            output_done.store(true, Ordering::Release);
            let ended = Ended { input: feeder.join(), stdout: out, stderr: errs.join() };
            drop(done_tx);
            ended
        });
        let host = &self.target.host;
        let status = child.wait().map_err(|e| TransportError::Io {
            host: host.clone(),
            what: "waiting for ssh".to_owned(),
            source: e,
        })?;
        self.outcome(status, ended, watch.hit.load(Ordering::Acquire))
    }
}

/// How the three copies of one command ended: input fed (in its thread), stdout, and stderr
/// (captured, in its thread).
struct Ended {
    input: std::thread::Result<std::io::Result<u64>>,
    stdout: Result<(), PumpError>,
    stderr: std::thread::Result<(Vec<u8>, Result<(), PumpError>)>,
}

impl OpensshSession {
    /// Starts the ssh client for `cmd`: multiplexed over this session's control master, or a
    /// login of its own.
    fn spawn_client(&self, cmd: String) -> Result<Child, TransportError> {
        Command::new(&self.ssh)
            .args(&self.client_args)
            .arg(&self.target.host)
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TransportError::Io {
                host: self.target.host.clone(),
                what: format!("running {}", self.ssh.display()),
                source: e,
            })
    }

    /// The command's result once ssh has exited: the first copy failure, the idle timeout, an
    /// ssh failure of its own (exit 255 with ssh's message), or the command's exit.
    fn outcome(
        &self,
        status: ExitStatus,
        ended: Ended,
        hit: u8,
    ) -> Result<RemoteOutput, TransportError> {
        let host = &self.target.host;
        let (errbuf, err_res) = ended.stderr.unwrap_or_else(|_| (Vec::new(), Ok(())));
        let errbuf = super::escape_stderr(&errbuf);
        ended.stdout.map_err(|e| e.into_transport(host))?;
        err_res.map_err(|e| e.into_transport(host))?;
        match hit {
            Watch::IDLE => {
                return Err(TransportError::Idle {
                    host: host.clone(),
                    after: self.target.idle_timeout,
                })
            }
            Watch::LOGIN => {
                return Err(TransportError::Timeout {
                    host: host.clone(),
                    what: "logging in".to_owned(),
                    after: self.target.connect_timeout + LOGIN_GRACE,
                })
            }
            _ => {}
        }
        match ended.input {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(TransportError::Io {
                    host: host.clone(),
                    what: "sending the input".to_owned(),
                    source: e,
                })
            }
            Err(_) => return Err(TransportError::Invalid("input thread panicked".to_owned())),
        }
        if status.code() == Some(255) {
            let text = String::from_utf8_lossy(&errbuf);
            if self.master_died(&text) {
                return Err(self.master_gone());
            }
            if looks_like_ssh_failure(&text) {
                return Err(map_failure(&self.target, &text));
            }
        }
        let signal = status.signal().map(|s| format!("{s}"));
        Ok(RemoteOutput { code: status.code(), signal, stdout: Vec::new(), stderr: errbuf })
    }
}

/// Copies `stdin` into ssh's pipe until either ends; returns how many bytes went in. A
/// command that exits without reading all its input closes the pipe: not an error. 256 KiB
/// at a time, not io::copy's 8 KiB: large payloads (artifacts) cost 32× fewer write(2)s into
/// ssh's pipe.
fn feed_input(
    stdin: &mut (dyn Read + Send),
    cin: &mut ChildStdin,
    output_done: &AtomicBool,
    touch: &(dyn Fn() + Sync),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if output_done.load(Ordering::Acquire) {
                    return Ok(total);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        match cin.write_all(&buf[..n]) {
            Ok(()) => {
                total += n as u64;
                touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// What ends a stalled command: no byte either way for `idle`, or (a command that logs in
/// itself) no output at all within `login` of its start.
struct Watch {
    started: Instant,
    /// Milliseconds after `started` of the last byte either way.
    last_byte: AtomicU64,
    /// Whether the command has printed anything (to stdout or stderr).
    heard: AtomicBool,
    idle: Duration,
    login: Option<Duration>,
    /// Why it ended the command: [`Watch::IDLE`], [`Watch::LOGIN`], or 0.
    hit: AtomicU8,
}

impl Watch {
    const IDLE: u8 = 1;
    const LOGIN: u8 = 2;

    fn new(idle: Duration, login: Option<Duration>) -> Watch {
        Watch {
            started: Instant::now(),
            last_byte: AtomicU64::new(0),
            heard: AtomicBool::new(false),
            idle,
            login,
            hit: AtomicU8::new(0),
        }
    }

    /// A byte moved (either way).
    fn touch(&self) {
        self.last_byte.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The command printed something.
    fn heard(&self) {
        self.heard.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// Calls `kill` (and records why) once the command stalls; returns early when `done` is
    /// dropped (the copies ended).
    fn run(&self, done: Receiver<()>, kill: &(dyn Fn() + Sync)) {
        loop {
            let now = self.started.elapsed();
            let last = Duration::from_millis(self.last_byte.load(Ordering::Relaxed));
            let quiet = now.saturating_sub(last);
            let mut wait = self.idle.saturating_sub(quiet);
            let mut why = Watch::IDLE;
            if let Some(login) = self.login.filter(|_| !self.heard.load(Ordering::Relaxed)) {
                if login.saturating_sub(now) < wait {
                    (wait, why) = (login.saturating_sub(now), Watch::LOGIN);
                }
            }
            if wait.is_zero() {
                self.hit.store(why, Ordering::Release);
                kill();
                return;
            }
            if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(wait) {
                continue;
            }
            return;
        }
    }
}

/// Why pumping one of the command's outputs stopped.
#[derive(Debug)]
enum PumpError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl PumpError {
    fn into_transport(self, host: &str) -> TransportError {
        match self {
            PumpError::Read(e) => TransportError::Io {
                host: host.to_owned(),
                what: "reading the command's output".to_owned(),
                source: e,
            },
            PumpError::Write(e) => output_error(host, e),
        }
    }
}

/// Copies `from` to `to` until end of input, calling `touch` for every chunk.
fn pump(
    from: &mut dyn Read,
    to: &mut dyn Write,
    touch: &(dyn Fn() + Sync),
) -> Result<(), PumpError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        touch();
        to.write_all(&buf[..n]).map_err(PumpError::Write)?;
    }
}

const SSH_FAILURES: &[&str] = &[
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "host key is known",
    "Permission denied (",
    "Connection refused",
    "Connection timed out",
    "Operation timed out",
    "No route to host",
    "Network is unreachable",
    "Could not resolve hostname",
    "Connection closed by",
    "Connection reset by",
    "Timeout, server",
    "kex_exchange_identification",
    "ssh: connect to host",
    "mux_client_",
    "Control socket connect",
];

fn looks_like_ssh_failure(stderr: &str) -> bool {
    SSH_FAILURES.iter().any(|p| stderr.contains(p))
}

/// Turns an `ssh` failure (exit 255) into the same errors the built-in backend gives.
fn map_failure(t: &Target, stderr: &str) -> TransportError {
    let port = t.port.unwrap_or(22);
    let display = if t.host.contains(':') {
        format!("[{}]:{port}", t.host)
    } else {
        format!("{}:{port}", t.host)
    };
    let last = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("ssh failed")
        .to_owned();
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        let fingerprint = stderr
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .map(|w| w.trim_end_matches('.').to_owned());
        // "Offending ED25519 key in /path/known_hosts:3"
        let lines = stderr
            .lines()
            .filter(|l| l.contains("Offending"))
            .filter_map(|l| l.rsplit(':').next()?.trim().parse().ok())
            .collect();
        let key_type = stderr
            .lines()
            .find_map(|l| {
                l.split("fingerprint for the ").nth(1)?.split(" key").next().map(ssh_type_name)
            })
            .unwrap_or_default();
        return TransportError::HostKeyChanged {
            host: known_hosts::lookup_name(&t.host, port),
            key_type: key_type.into(),
            fingerprint,
            known_hosts: t.known_hosts.clone(),
            lines,
        };
    }
    if stderr.contains("Host key verification failed") || stderr.contains("host key is known") {
        // Fetch the key ourselves (handshake only) so the message carries its fingerprint.
        let blob = probe_host_key(&t.host, port, t.connect_timeout).ok();
        return unknown_host_error(&t.host, port, blob.as_deref(), &t.known_hosts);
    }
    if stderr.contains("Permission denied (") {
        return TransportError::Auth {
            host: display,
            user: t.user.clone().unwrap_or_else(super::local_user),
            tried: "the ssh client's keys".to_owned(),
            hint: "pass --identity FILE (and --user), load the key into ssh-agent (the ssh client never asks for a passphrase here; --transport builtin does), or add it to the node's authorized_keys".to_owned(),
        };
    }
    if stderr.contains("timed out") || stderr.contains("Timeout, server") {
        return TransportError::Timeout {
            host: display,
            what: "connecting".to_owned(),
            after: t.connect_timeout,
        };
    }
    if [
        "Connection refused",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "ssh: connect to host",
    ]
    .iter()
    .any(|p| stderr.contains(p))
    {
        return TransportError::Unreachable { host: display, reason: last };
    }
    TransportError::Protocol {
        host: display,
        what: "talking to the node".to_owned(),
        message: last,
    }
}

fn ssh_type_name(upper: &str) -> String {
    match upper {
        "ED25519" => "ssh-ed25519".to_owned(),
        "ECDSA" => "ecdsa-sha2-nistp256".to_owned(),
        "RSA" => "ssh-rsa".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Runs a watch until it ends the command (or `done` goes); returns why and after how long.
    fn watched(w: &Watch, before: impl FnOnce(&Watch)) -> (u8, Duration) {
        let (_done, rx) = std::sync::mpsc::channel::<()>();
        let killed = AtomicBool::new(false);
        before(w);
        w.run(rx, &|| killed.store(true, Ordering::Relaxed));
        assert!(killed.load(Ordering::Relaxed), "run returned without ending the command");
        (w.hit.load(Ordering::Relaxed), w.started.elapsed())
    }

    /// A one-command login that prints nothing is ended at the login bound, before the idle
    /// timeout; one that printed is left to the idle timeout; a master's command (no login
    /// bound) too.
    #[test]
    fn a_silent_login_is_ended_at_the_login_bound() {
        let ms = Duration::from_millis;
        let (why, after) = watched(&Watch::new(ms(400), Some(ms(50))), |_| {});
        assert_eq!(why, Watch::LOGIN);
        assert!(after >= ms(50) && after < ms(400), "{after:?}");
        let (why, after) = watched(&Watch::new(ms(200), Some(ms(50))), Watch::heard);
        assert_eq!(why, Watch::IDLE);
        assert!(after >= ms(200), "{after:?}");
        // Input alone is not a sign of life from the node.
        let (why, _) = watched(&Watch::new(ms(400), Some(ms(50))), Watch::touch);
        assert_eq!(why, Watch::LOGIN);
        let (why, after) = watched(&Watch::new(ms(100), None), |_| {});
        assert_eq!(why, Watch::IDLE);
        assert!(after >= ms(100), "{after:?}");
    }

    /// `ssh -G`'s line under OpenSSH 9.2 with no Ciphers setting, then a FIPS-style policy and
    /// a hardened config: only the default set is reordered.
    #[test]
    fn gcm_first_only_reorders_the_default_set() {
        let default = "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,\
                       aes128-gcm@openssh.com,aes256-gcm@openssh.com";
        assert_eq!(gcm_first(default), Some(GCM_FIRST));
        assert_eq!(gcm_first("aes256-gcm@openssh.com,aes256-ctr,aes128-gcm@openssh.com"), None);
        assert_eq!(gcm_first("chacha20-poly1305@openssh.com"), None);
        let widened = format!("{default},aes256-cbc");
        assert_eq!(gcm_first(&widened), None);
    }

    /// The system `ssh` (the one the openssh transport runs) reports exactly that default set
    /// when nothing configures ciphers; if this fails, OpenSSH changed its defaults.
    #[test]
    fn the_system_ssh_default_set_is_the_one_reordered() {
        let Ok(out) = Command::new("ssh")
            .args(["-F", "/dev/null", "-G", "127.0.0.1"])
            .stdin(Stdio::null())
            .output()
        else {
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            let must = root
                || ["CI", "HAPKI_REQUIRE_TESTBED"].iter().any(|v| std::env::var_os(v).is_some());
            assert!(!must, "no ssh client to ask for its default ciphers; CI and root never skip");
            eprintln!("\n*** SKIPPED: no ssh client to ask for its default ciphers ***\n");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find_map(|l| l.strip_prefix("ciphers ")).unwrap_or_default();
        assert_eq!(gcm_first(line), Some(GCM_FIRST), "{line}");
    }

    /// File names reach ssh as one quoted value each, `%` not expanded, relative made absolute;
    /// what cannot be quoted is refused.
    #[test]
    fn paths_are_given_to_ssh_as_one_literal_file() {
        assert_eq!(config_path(Path::new("/a b/100%h/kh")).unwrap(), r#""/a b/100%%h/kh""#);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config_path(Path::new("kh")).unwrap(), format!("\"{}/kh\"", cwd.display()));
        for bad in ["/a\"b", "/a\nb"] {
            let e = config_path(Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("--transport builtin"), "{e}");
        }
        // What the system ssh makes of it: exactly one file, the one named.
        let Ok(out) = Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("UserKnownHostsFile={}", config_path(Path::new("/a b/1%d")).unwrap()))
            .args(["-G", "127.0.0.1"])
            .stdin(Stdio::null())
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == "userknownhostsfile /a b/1%d"), "{text}");
    }

    #[test]
    fn maps_openssh_messages() {
        let t = Target::new("n", "10.0.0.1", Path::new("/kh").to_owned());
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
            @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            The fingerprint for the ED25519 key sent by the remote host is\n\
            SHA256:abcDEF123.\n\
            Offending ED25519 key in /kh:7\n\
            Host key verification failed.\n";
        match map_failure(&t, changed) {
            TransportError::HostKeyChanged { fingerprint, lines, key_type, .. } => {
                assert_eq!(fingerprint.as_deref(), Some("SHA256:abcDEF123"));
                assert_eq!(lines, [7]);
                assert_eq!(&*key_type, "ssh-ed25519");
            }
            e => panic!("{e}"),
        }
        let denied = "root@10.0.0.1: Permission denied (publickey).\n";
        assert!(matches!(map_failure(&t, denied), TransportError::Auth { .. }));
        let refused = "ssh: connect to host 10.0.0.1 port 22: Connection refused\n";
        assert!(matches!(map_failure(&t, refused), TransportError::Unreachable { .. }));
        assert!(!looks_like_ssh_failure("my script failed\n"));
    }
}
