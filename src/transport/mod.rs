//! Running fixed POSIX-sh scripts on nodes over SSH, behind one small trait with two backends:
//!
//! - [`builtin`]: libssh2 (vendored) — the operator's machine needs nothing else;
//! - [`openssh`]: the system `ssh` client, for ProxyJump bastions, FIDO keys, SSH certificates;
//!   the default ([`Backend::Auto`]) whenever an `ssh` is on `PATH`.
//!
//! [`options`] holds the one precedence between command-line options, the inventory and the
//! client configuration.
//!
//! Host-key policy lives in one place (`known_hosts`): unknown or changed keys are refused,
//! never added, and on a changed key nothing is sent. Inventory values never reach a remote shell
//! unquoted: a script is a fixed string of ours, and every value is a positional argument
//! (`$1`, `$2`, …) passed through `shell_quote`.

pub mod builtin;
pub(crate) mod known_hosts;
pub mod openssh;
pub mod options;
pub mod ssh_config;

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Categorized, Category};

/// Everything needed to reach one node. Values left `None` come from `~/.ssh/config` (built-in
/// backend) or the `ssh` client's own configuration (OpenSSH backend), else ssh's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name shown in reports (the inventory node name, or the host as given).
    pub name: String,
    /// Address, DNS name or `~/.ssh/config` alias.
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Explicit login keys; empty means: the agent, then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub identity: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    /// Log in as a normal user and run every script through `sudo -n`.
    pub become_: bool,
    /// How often to probe an idle connection; three unanswered probes mean the node is gone.
    pub keepalive: Duration,
    /// A command that sends and receives nothing for this long is ended (a hung script or
    /// login); every byte either way resets it.
    pub idle_timeout: Duration,
    /// The session will carry bulk data (a push's artifacts): worth a moment per node to pick
    /// the fastest cipher the user's configuration allows (the system client asks `ssh -G`,
    /// 7 ms of CPU: a twentieth of an audit's whole cost per node, so only when it pays).
    pub bulk: bool,
}

impl Target {
    /// A target with ssh's defaults for everything but the host and the known_hosts file.
    pub fn new(name: impl Into<String>, host: impl Into<String>, known_hosts: PathBuf) -> Target {
        Target {
            name: name.into(),
            host: host.into(),
            port: None,
            user: None,
            identity: Vec::new(),
            known_hosts,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            become_: false,
            keepalive: DEFAULT_KEEPALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            bulk: false,
        }
    }
}

/// `--connect-timeout` default.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive probe interval (OpenSSH's ServerAliveInterval); a node is declared gone after
/// three unanswered probes, as with ServerAliveCountMax=3.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
/// `--idle-timeout` default: generous, because a node's facts hash every artifact already at its
/// destination before printing it (minutes for tens of GiB), and a node of a streaming push may
/// wait for the slowest node's facts before its data flows.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// At most this much stderr is kept from a remote command (the last bytes: the error a script
/// prints as it gives up is what matters).
pub(crate) const STDERR_LIMIT: usize = 64 * 1024;
/// A command whose stderr exceeds this is ended at once and fails: it is read while it arrives,
/// so a node that floods it costs nothing but this count.
pub(crate) const STDERR_MAX: u64 = 4 * 1024 * 1024;
/// At most this much stdout is captured by [`Session::run`] (facts are at most 8 MiB); more ends
/// the command at once and fails it. [`Session::run_streaming`]'s sink sets its own caps.
pub(crate) const STDOUT_LIMIT: usize = 16 * 1024 * 1024;

/// Opens sessions to nodes. Implementations are shared across the threads of a parallel run.
pub trait Transport: Send + Sync {
    /// Connects, proves the node's identity against known_hosts and logs in. Nothing is sent to
    /// a node whose host key is unknown or changed.
    fn connect(&self, target: &Target) -> Result<Box<dyn Session>, TransportError>;

    /// A session for a caller that runs one command on the node (facts, a push): it may log in
    /// only when the command runs, and each command may be a login of its own. The same checks
    /// as [`Transport::connect`]: nothing is sent before the node's host key is proven. By
    /// default it is `connect` (the built-in client's session is one login anyway).
    fn connect_once(&self, target: &Target) -> Result<Box<dyn Session>, TransportError> {
        self.connect(target)
    }
}

/// A logged-in connection to one node.
pub trait Session: Send {
    /// The node this session is connected to.
    fn target(&self) -> &Target;

    /// Runs the fixed POSIX-sh `script` with `args` as `$1…` (each quoted by us), streaming
    /// `stdin` to it and its stdout to `stdout`. The returned output has an empty `stdout`.
    fn run_streaming(
        &mut self,
        script: &str,
        args: &[&str],
        stdin: &mut (dyn Read + Send),
        stdout: &mut (dyn Write + Send),
    ) -> Result<RemoteOutput, TransportError>;

    /// Like [`Session::run_streaming`], capturing stdout (up to `STDOUT_LIMIT`).
    fn run(
        &mut self,
        script: &str,
        args: &[&str],
        stdin: &mut (dyn Read + Send),
    ) -> Result<RemoteOutput, TransportError> {
        let mut out = LimitedBuf::new(STDOUT_LIMIT);
        let mut res = self.run_streaming(script, args, stdin, &mut out)?;
        res.stdout = out.buf;
        Ok(res)
    }
}

impl fmt::Debug for dyn Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({})", self.target().name)
    }
}

/// What a remote command ended with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteOutput {
    /// The exit status, unless it died of a signal.
    pub code: Option<i32>,
    /// The signal name (`TERM`, `KILL`, …) if it died of one.
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    /// At most `STDERR_LIMIT` bytes.
    pub stderr: Vec<u8>,
}

impl RemoteOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output if the command succeeded, else [`TransportError::RemoteFailed`] naming `what`
    /// and the last line of stderr.
    pub fn check(self, host: &str, what: &str) -> Result<RemoteOutput, TransportError> {
        if self.success() {
            return Ok(self);
        }
        let stderr = String::from_utf8_lossy(&self.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        Err(TransportError::RemoteFailed {
            host: host.to_owned(),
            what: what.to_owned(),
            status: match (&self.code, &self.signal) {
                (_, Some(sig)) => format!("killed by SIG{sig}"),
                (Some(c), None) => format!("exit status {c}"),
                (None, None) => "no exit status".to_owned(),
            },
            stderr: last.to_owned(),
        })
    }
}

/// Why talking to a node failed. Each message is one line naming the node's address, the
/// problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: host key {key_type} {} is not in {}; check it against `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub` on the node, then add it: {hint}", fingerprint.as_deref().unwrap_or("(fingerprint unavailable)"), known_hosts.display(), short_type(key_type))]
    HostKeyUnknown {
        /// `host` or `[host]:port`, as known_hosts spells it.
        host: String,
        /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …
        key_type: Box<str>,
        /// `SHA256:…` as `ssh-keygen -l` prints it.
        fingerprint: Option<String>,
        known_hosts: PathBuf,
        /// The exact command that adds the key (after checking it).
        hint: String,
    },
    #[error("{host}: HOST KEY CHANGED: the node presented {key_type} {} but {} {} holds a different key; nothing was sent (possible man-in-the-middle); if the node was reinstalled, verify its new key out of band, then run: ssh-keygen -R {host} -f {}", fingerprint.as_deref().unwrap_or("(fingerprint unavailable)"), known_hosts.display(), lines_desc(lines), known_hosts.display())]
    HostKeyChanged {
        /// `host` or `[host]:port`, as known_hosts spells it.
        host: String,
        key_type: Box<str>,
        fingerprint: Option<String>,
        known_hosts: PathBuf,
        /// known_hosts line numbers of the keys the node should have had.
        lines: Vec<usize>,
    },
    #[error("{host}: {} line {line} vouches for this host's keys with an @cert-authority (SSH host certificates), which the built-in transport does not check; use --transport openssh, or add the node's own host key to that file", known_hosts.display())]
    HostCertificates { host: String, known_hosts: PathBuf, line: usize },
    #[error("{host}: host key {fingerprint} is marked @revoked in {} line {line}; the node must get a new host key", known_hosts.display())]
    HostKeyRevoked { host: String, fingerprint: String, known_hosts: PathBuf, line: usize },
    #[error("{host}: cannot connect: {reason}; check that the node is up and its sshd listens on that address and port")]
    Unreachable { host: String, reason: String },
    #[error("{host}: no answer within {}s while {what}; check the node and the network, or raise --connect-timeout", after.as_secs_f32())]
    Timeout { host: String, what: String, after: Duration },
    #[error("{host}: {user} was not let in (tried: {tried}); {hint}")]
    Auth { host: String, user: String, tried: String, hint: String },
    #[error("{host}: SSH failed while {what}: {message}")]
    Protocol { host: String, what: String, message: String },
    #[error("{host}: {what} failed on the node ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    RemoteFailed { host: String, what: String, status: String, stderr: String },
    #[error("{host}: the node sent more than {cap} bytes of {stream}, over hapki's cap; the command was ended and the node fails (a login script that prints, or a hostile node)")]
    TooMuchOutput { host: String, stream: String, cap: u64 },
    #[error("{host}: the command sent and received nothing for {}s; it was ended (a hung script or login on the node); check the node, or raise --idle-timeout", after.as_secs())]
    Idle { host: String, after: Duration },
    #[error("{host}: {what}: {source}")]
    Io { host: String, what: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn short_type(key_type: &str) -> &str {
    match key_type {
        "ssh-ed25519" => "ed25519",
        t if t.starts_with("ecdsa-") => "ecdsa",
        "ssh-rsa" => "rsa",
        _ => "*",
    }
}

fn lines_desc(lines: &[usize]) -> String {
    match lines {
        [] => String::new(),
        [one] => format!("line {one}"),
        many => {
            format!("lines {}", many.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(","))
        }
    }
}

impl Categorized for TransportError {
    fn category(&self) -> Category {
        match self {
            TransportError::HostKeyUnknown { .. }
            | TransportError::HostKeyChanged { .. }
            | TransportError::HostKeyRevoked { .. }
            | TransportError::HostCertificates { .. } => Category::HostKey,
            TransportError::Unreachable { .. }
            | TransportError::Timeout { .. }
            | TransportError::Auth { .. }
            | TransportError::Protocol { .. }
            | TransportError::TooMuchOutput { .. }
            | TransportError::Idle { .. }
            | TransportError::RemoteFailed { .. } => Category::NodesFailed,
            TransportError::Io { .. } | TransportError::Invalid(_) => Category::Unexpected,
        }
    }
}

/// Which backend to use (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// [`Backend::Openssh`] when an `ssh` client is on `PATH`, else [`Backend::Builtin`]:
    /// see [`Backend::resolve`].
    #[default]
    Auto,
    Builtin,
    Openssh,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Builtin => "builtin",
            Backend::Openssh => "openssh",
        })
    }
}

impl Backend {
    /// The backend that runs: `Auto` becomes `Openssh` when an executable `ssh` is on `PATH`
    /// (it is the faster one for large payloads, and it honours the whole `~/.ssh/config`:
    /// ProxyJump, certificates, agents), else `Builtin`. Both trust exactly the same host keys.
    pub fn resolve(self) -> Backend {
        match self {
            Backend::Auto if find_on_path("ssh").is_some() => Backend::Openssh,
            Backend::Auto => Backend::Builtin,
            b => b,
        }
    }
}

/// The first executable regular file called `name` in the directories of `PATH`, as a shell
/// would find it.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).filter(|d| !d.as_os_str().is_empty()).find_map(|d| {
        let p = d.join(name);
        let meta = std::fs::metadata(&p).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

/// The backend's transport (`Auto` resolved, see [`Backend::resolve`]); `passphrase` is asked
/// for encrypted identity files by the built-in backend (the `ssh` client never prompts: it runs
/// with `BatchMode=yes` and uses the agent).
pub fn transport_with(
    backend: Backend,
    passphrase: Option<builtin::PassphraseFn>,
) -> Result<Box<dyn Transport>, TransportError> {
    Ok(match backend.resolve() {
        Backend::Openssh if find_on_path("ssh").is_none() => {
            return Err(TransportError::Invalid(
                "--transport openssh: no `ssh` client on PATH; install OpenSSH's client, or use \
                 --transport builtin"
                    .to_owned(),
            ))
        }
        Backend::Openssh => Box::new(openssh::OpensshTransport::new()?),
        _ => {
            let b = builtin::BuiltinTransport::new();
            Box::new(match passphrase {
                Some(f) => b.with_passphrase(f),
                None => b,
            })
        }
    })
}

/// The backend's transport with default settings (no passphrase prompt, `~/.ssh/config` read
/// by the built-in backend when present).
pub fn transport(backend: Backend) -> Result<Box<dyn Transport>, TransportError> {
    transport_with(backend, None)
}

/// Quotes `s` for a POSIX shell: the result is one word whose value is exactly `s`.
/// Single quotes protect everything except `'` itself, which becomes `'\''`.
pub(crate) fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The command line sent to the node's login shell: `[sudo -n] sh -c SCRIPT hapki ARGS…`, every
/// part quoted. `hapki` becomes `$0`, so the arguments are `$1…`.
///
/// SCRIPT goes as it is when the whole line fits in [`PLAIN_LIMIT`]; only a longer one is
/// packed (gzip, base64, `eval`ed: about a third of the size). libssh2 sends an exec request as
/// one packet of at most 35000 bytes, which a push with many artifact destinations can outgrow.
/// Packing is not the default because unpacking costs the node four processes (a command
/// substitution, `printf`'s pipeline, `base64`, `gzip`): a tenth of a whole push's and a third
/// of an audit's (`scripts/bench-push`). `base64` (coreutils) and `gzip` are on every node
/// kubeadm supports; a node without them fails with a message naming them (exit 127), never by
/// running nothing.
pub(crate) fn remote_command(
    script: &str,
    args: &[&str],
    become_: bool,
) -> Result<String, TransportError> {
    if script.contains('\0') || args.iter().any(|a| a.contains('\0')) {
        return Err(TransportError::Invalid(
            "a NUL byte cannot be passed to a remote command".to_owned(),
        ));
    }
    let head = if become_ { "sudo -n " } else { "" };
    let line = |script: &str| {
        let mut cmd = format!("{head}sh -c {} hapki", shell_quote(script));
        for a in args {
            cmd.push(' ');
            cmd.push_str(&shell_quote(a));
        }
        cmd
    };
    let plain = line(script);
    if plain.len() <= PLAIN_LIMIT {
        return Ok(plain);
    }
    Ok(line(&unpack_command(script)))
}

/// The longest command line sent unpacked: libssh2's 35000-byte exec packet, less its framing
/// and a margin.
pub(crate) const PLAIN_LIMIT: usize = 32 * 1024;

/// A shell command that decodes `script` from its packed form and runs it in the same shell
/// (so `$0` and the arguments are the script's).
fn unpack_command(script: &str) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let packed = gz.write_all(script.as_bytes()).and_then(|()| gz.finish()).unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(packed);
    format!(
        "s=$(printf %s {b64} | base64 -d | gzip -dc) && [ -n \"$s\" ] || {{ echo \
         'hapki: this node cannot unpack the command: it needs base64 (coreutils) and gzip' >&2; \
         exit 127; }}; eval \"$s\""
    )
}

/// Runs `f` on every item with at most `parallel` at a time (at least one), returning the
/// results in the items' order. A panic in `f` propagates.
pub fn for_each_parallel<T, R, F>(items: &[T], parallel: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let workers = parallel.max(1).min(items.len());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        // Invariant: every index below items.len() is claimed by exactly one worker, and the
        // scope only returns once all workers finished (a panicking `f` re-panics at the join),
        // so no slot can still be None here. Nothing user-controlled reaches this.
        .map(|r| r.expect("every index is filled once the scope has joined"))
        .collect()
}

/// A sink's refusal of more output: carried inside the `io::Error` a sink returns, so that the
/// transport reports [`TransportError::TooMuchOutput`] and ends the command at once.
#[derive(Debug)]
pub(crate) struct CapExceeded {
    /// Which output: `stdout`, `stderr`, `facts (stdout)`…
    pub stream: String,
    pub cap: u64,
}

impl fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {} bytes on {}", self.cap, self.stream)
    }
}

impl std::error::Error for CapExceeded {}

impl CapExceeded {
    /// The `io::Error` a sink returns when `stream` goes past `cap`.
    pub fn error(stream: &str, cap: u64) -> std::io::Error {
        std::io::Error::other(CapExceeded { stream: stream.to_owned(), cap })
    }
}

/// The error for a failed write of the command's output: [`TransportError::TooMuchOutput`] when
/// the sink refused more, else an I/O error.
pub(crate) fn output_error(host: &str, e: std::io::Error) -> TransportError {
    match e.get_ref().and_then(|x| x.downcast_ref::<CapExceeded>()) {
        Some(c) => TransportError::TooMuchOutput {
            host: host.to_owned(),
            stream: c.stream.clone(),
            cap: c.cap,
        },
        None => TransportError::Io {
            host: host.to_owned(),
            what: "writing the command's output".to_owned(),
            source: e,
        },
    }
}

/// A `Write` that keeps at most `limit` bytes and refuses more ([`CapExceeded`]).
pub(crate) struct LimitedBuf {
    pub(crate) buf: Vec<u8>,
    limit: usize,
}

impl LimitedBuf {
    pub(crate) fn new(limit: usize) -> LimitedBuf {
        LimitedBuf { buf: Vec::new(), limit }
    }
}

impl Write for LimitedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.limit.saturating_sub(self.buf.len()) {
            return Err(CapExceeded::error("stdout", self.limit as u64));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A command's stderr: keeps the last [`STDERR_LIMIT`] bytes, refuses more than [`STDERR_MAX`]
/// in all ([`CapExceeded`]).
pub(crate) struct StderrBuf {
    buf: std::collections::VecDeque<u8>,
    total: u64,
}

impl StderrBuf {
    pub(crate) fn new() -> StderrBuf {
        StderrBuf { buf: std::collections::VecDeque::new(), total: 0 }
    }
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

impl Write for StderrBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.total += data.len() as u64;
        if self.total > STDERR_MAX {
            return Err(CapExceeded::error("stderr", STDERR_MAX));
        }
        let keep = &data[data.len().saturating_sub(STDERR_LIMIT)..];
        let excess = (self.buf.len() + keep.len()).saturating_sub(STDERR_LIMIT);
        self.buf.drain(..excess);
        self.buf.extend(keep);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes text that came from a node safe to print: every control character (C0 but `\n` when
/// `keep_newlines`, DEL, C1) and every bidirectional-override or invisible formatting character
/// becomes a visible escape (`\x1b`, `\r`, `\u{202e}`), so a node cannot move the cursor,
/// rewrite a line hapki printed, retitle the terminal or reorder what is read. The one function
/// for node text, applied where it enters hapki's types (a command's stderr, facts fields,
/// node messages), so every printer is covered.
pub fn escape_node_text(s: &str, keep_newlines: bool) -> String {
    let unsafe_char = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
    };
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out
}

/// [`escape_node_text`] of a command's raw stderr, lines kept (a CRLF line end, as ssh's own
/// warnings have, is a line end, not a `\r` to show).
pub(crate) fn escape_stderr(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    escape_node_text(&text, true).into_bytes()
}

/// The user ssh logs in as when none is configured: the local user, as ssh does.
pub(crate) fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "root".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Every adversarial string must come back byte-for-byte through a real `sh`.
    #[test]
    fn shell_quote_round_trips_through_sh() {
        let nasty = [
            "",
            "plain",
            "it's",
            "''",
            "'",
            "a'b'c",
            "$(touch /tmp/hapki-pwned)",
            "`touch /tmp/hapki-pwned`",
            "${HOME}",
            "a\nb\n",
            "\n",
            "-n",
            "--help",
            "-e \\n",
            "back\\slash\\",
            "tab\there",
            "semi;colon && or || pipe | amp &",
            "glob * ? [a]",
            "~",
            "\"double\"",
            "ünïcödé ✓",
            " leading and trailing ",
            "!event",
        ];
        for s in nasty {
            let script = format!("printf '%s' {}", shell_quote(s));
            let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{s:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s, "quoting {s:?}");
        }
        assert!(!std::path::Path::new("/tmp/hapki-pwned").exists());
    }

    /// The whole remote command line, as a login shell parses it.
    #[test]
    fn remote_command_passes_args_as_positional_parameters() {
        let args = ["$(id)", "a b", "it's", "-x", "", "line1\nline2"];
        let cmd =
            remote_command("for a in \"$@\"; do printf '<%s>' \"$a\"; done", &args, false).unwrap();
        let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "<$(id)><a b><it's><-x><><line1\nline2>"
        );
        assert!(remote_command("true", &["a\0b"], false).is_err());
        assert!(remote_command("true", &[], true).unwrap().starts_with("sudo -n sh -c "));
    }

    /// A script longer than the exec packet allows goes packed, and a node lacking the
    /// unpacking tools says so instead of running nothing and exiting 0.
    #[test]
    fn a_node_without_gzip_fails_by_name() {
        // 40000 bytes of a comment line: over the 35000-byte packet even before quoting.
        let long = format!("#{}\necho ran", "x".repeat(40_000));
        let cmd = remote_command(&long, &[], false).unwrap();
        assert!(cmd.len() < 35_000, "packed: {} bytes", cmd.len());
        let dir = tempfile::tempdir().unwrap();
        // A PATH with sh and base64 but no gzip.
        for tool in ["sh", "base64"] {
            let real = which(tool);
            std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
        }
        let out =
            Command::new("/bin/sh").arg("-c").arg(&cmd).env("PATH", dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs base64 (coreutils) and gzip"), "{err}");
        // Negative control: with the system PATH it runs.
        let ok = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "ran\n");
    }

    /// A script that fits goes as it is: it runs on a PATH without base64 or gzip, and its
    /// arguments still arrive as `$1…`.
    #[test]
    fn a_short_script_needs_no_unpacking() {
        let cmd = remote_command("echo \"ran $1\"", &["it's"], false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(which("sh"), dir.path().join("sh")).unwrap();
        let out =
            Command::new("/bin/sh").arg("-c").arg(&cmd).env("PATH", dir.path()).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran it's\n");
        assert!(!cmd.contains("base64"), "{cmd}");
    }

    fn which(tool: &str) -> std::path::PathBuf {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"))
    }

    #[test]
    fn node_text_is_escaped_to_printable() {
        let hostile = "ok\x1b[2K\rinstalled\x08\x08\x1b]0;t\x07\u{9b}31m\u{202e}gnp.exe\tend";
        let e = escape_node_text(hostile, false);
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert_eq!(
            e,
            "ok\\x1b[2K\\rinstalled\\x08\\x08\\x1b]0;t\\x07\\u{9b}31m\\u{202e}gnp.exe\\tend"
        );
        assert_eq!(escape_node_text("a\nb\rc", true), "a\nb\\rc");
        assert_eq!(escape_node_text("a\nb", false), "a\\nb");
        assert_eq!(escape_node_text("plain ünïcödé", false), "plain ünïcödé");
        assert_eq!(escape_stderr(b"x\xff\x1b\n"), "x\u{fffd}\\x1b\n".as_bytes());
        assert_eq!(escape_stderr(b"a\r\nb\rc\r"), b"a\nb\\rc\\r");
    }

    #[test]
    fn parallel_keeps_order_and_bounds_concurrency() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<usize> = (0..40).collect();
        let out = for_each_parallel(&items, 4, |i| {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            live.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
        assert!(for_each_parallel(&[] as &[u8], 0, |_| 1).is_empty());
        assert_eq!(for_each_parallel(&[7], 0, |x| *x), [7]);
    }

    #[test]
    fn categories() {
        let e = TransportError::HostKeyChanged {
            host: "h".into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: Some("SHA256:x".into()),
            known_hosts: "/k".into(),
            lines: vec![3],
        };
        assert_eq!(e.category(), Category::HostKey);
        let msg = e.to_string();
        assert!(msg.contains("/k line 3") && msg.contains("ssh-keygen -R h -f /k"), "{msg}");
        assert!(!msg.contains('\n'));
        let e = TransportError::Unreachable { host: "h".into(), reason: "refused".into() };
        assert_eq!(e.category(), Category::NodesFailed);
    }
}
