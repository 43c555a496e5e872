//! rst-trace-peer: a small, predictable TCP peer for the rst-trace end-to-end tests.
//!
//! std + libc only. Every subcommand prints `ready <pid>` on stdout (flushed) once it is set up,
//! then acts, printing one line per observable result. The first token of every later line is the
//! result keyword; extra `key=value` tokens follow.
//!
//! Every wait is bounded: subcommands that serve (`listen`) run until SIGTERM/SIGINT, or until
//! stdin reaches EOF when stdin is a pipe (so a peer whose parent test died goes away on its own).
//!
//! ```text
//! rst-trace-peer listen  --addr A --port P [--backlog N] [--accept] [--nofile N] [--defer-accept S] [--hold-ms MS]
//!     [--reuseport] [--exec-as PATH] [--fd N]
//!     --reuseport: SO_REUSEPORT, so several listeners share the port, each with its own queue
//!     --exec-as PATH: after listen(), exec PATH (a link to this program under another name)
//!     with the listening socket as --fd N: the socket's owner changes its name, as a service
//!     behind a launcher does
//! rst-trace-peer connect --addr A --port P [--count N] [--timeout-ms MS] [--nonblocking] [--hold-ms MS]
//!     [--send-bytes N [--go-file PATH]]
//!     --send-bytes: write N bytes on each connection once connected (`sent attempt=I`); with
//!     --nonblocking after all attempts finished and, with --go-file, once PATH exists (`go`)
//! rst-trace-peer abort-close --port P [--addr A] [--timeout-ms MS]
//! rst-trace-peer linger0     --port P [--addr A] [--wait-data] [--timeout-ms MS]
//! rst-trace-peer send --addr A --port P --bytes N [--wait-close] [--timeout-ms MS]
//! rst-trace-peer late-send --addr A --port P [--bytes N] [--late-bytes N] [--go-file PATH] [--close-after-eof] [--timeout-ms MS]
//! rst-trace-peer idle-linger0 --port P --idle-ms MS [--addr A] [--reply-bytes N] [--timeout-ms MS]
//! rst-trace-peer keepalive --addr A --port P [--keepidle S] [--keepintvl S] [--keepcnt N] [--timeout-ms MS]
//! rst-trace-peer delayed-ack --addr SERVER --src A --port P [--count N] [--sport-base P] [--timeout-ms MS] [--linger-ms MS]
//!     raw-socket SYNs; prints `synack sport=S`…, `synacks N`; sends the final ACKs on SIGUSR1:
//!     `acked N synack_retrans=R`, then for --linger-ms `rst sport=S`…, `done rsts=K`
//! ```
//!
//! Output lines:
//! * listen:  `accepted peer=IP:PORT`, `accept_error ERRNO`, `conn_closed peer=…`, `conn_reset peer=…`
//! * connect: `<result> attempt=I lport=P` with result one of `connected`, `refused`, `timeout`,
//!   `in_progress` (only with --nonblocking --timeout-ms 0) or an errno name (`EADDRNOTAVAIL`, …)
//! * abort-close: `accepted peer=…`, `closed unread=N`
//! * linger0: `accepted peer=…`, `closed linger=0 drained=N`
//! * send: `connected lport=P` (or the connect result as above, then exit 1), `sent N`, and with
//!   --wait-close one of `eof`, `reset`, `timeout`, ERRNO
//!
//! Exit status: 0 on success, 1 on a setup failure (message on stderr), 2 on bad usage.

use rst_trace_common::TcpState;
use std::collections::HashMap;
use std::io::Write;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    unsafe {
        let mut sa: libc::sigaction = mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0; // no SA_RESTART: poll() returns EINTR and we look at STOP
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        // A closed stdout must not kill us silently halfway through.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    // Ignore EPIPE: the harness may have stopped reading.
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn die(msg: &str) -> ! {
    eprintln!("rst-trace-peer: {msg}");
    exit(1)
}

fn usage(msg: &str) -> ! {
    eprintln!("rst-trace-peer: {msg}");
    eprintln!(
        "usage: rst-trace-peer listen|connect|abort-close|linger0|send [options] (see source header)"
    );
    exit(2)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("errno{e}"),
    };
    n.to_string()
}

/// The result keyword for a failed connect.
fn connect_result(e: i32) -> String {
    match e {
        libc::ECONNREFUSED => "refused".into(),
        libc::ETIMEDOUT => "timeout".into(),
        _ => errno_name(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    flags: HashMap<String, Option<String>>,
}

impl Args {
    /// `known` lists the options; a trailing `!` marks a flag without value.
    fn parse(rest: &[String], known: &[&str]) -> Args {
        let mut flags = HashMap::new();
        let mut i = 0;
        while i < rest.len() {
            let a = &rest[i];
            let name = a
                .strip_prefix("--")
                .unwrap_or_else(|| usage(&format!("unexpected argument {a:?}")));
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            let is_flag = known.contains(&format!("{name}!").as_str());
            let takes_value = known.contains(&name);
            if !is_flag && !takes_value {
                usage(&format!("unknown option --{name}"));
            }
            if is_flag {
                if inline.is_some() {
                    usage(&format!("--{name} takes no value"));
                }
                flags.insert(name.to_string(), None);
            } else {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        rest.get(i)
                            .cloned()
                            .unwrap_or_else(|| usage(&format!("--{name} needs a value")))
                    }
                };
                flags.insert(name.to_string(), Some(v));
            }
            i += 1;
        }
        Args { flags }
    }

    fn has(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.flags.get(name).and_then(|v| v.as_deref())
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.str(name).map(|v| {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("--{name}: not a number: {v:?}")))
        })
    }

    fn req_num<T: std::str::FromStr>(&self, name: &str) -> T {
        self.num(name)
            .unwrap_or_else(|| usage(&format!("--{name} is required")))
    }

    fn addr(&self, default: Option<&str>) -> IpAddr {
        let s = self
            .str("addr")
            .or(default)
            .unwrap_or_else(|| usage("--addr is required"));
        s.parse()
            .unwrap_or_else(|_| usage(&format!("--addr: not an IP address: {s:?}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets (thin libc wrappers)

fn to_sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

fn from_sockaddr(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match st.ss_family as i32 {
        libc::AF_INET => {
            let sin = unsafe { &*(st as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(st as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

fn family(ip: &IpAddr) -> i32 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

fn tcp_socket(ip: &IpAddr) -> Result<i32, i32> {
    let fd = unsafe {
        libc::socket(
            family(ip),
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn set_int_opt(fd: i32, level: i32, opt: i32, val: i32) -> Result<(), i32> {
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &val as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn local_port(fd: i32) -> u16 {
    let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe { libc::getsockname(fd, &mut st as *mut _ as *mut libc::sockaddr, &mut len) };
    if r < 0 {
        return 0;
    }
    from_sockaddr(&st).map(|a| a.port()).unwrap_or(0)
}

fn close(fd: i32) {
    unsafe {
        libc::close(fd);
    }
}

fn listener(ip: IpAddr, port: u16, backlog: i32, reuseport: bool) -> i32 {
    let fd = tcp_socket(&ip).unwrap_or_else(|e| die(&format!("socket: {}", errno_name(e))));
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .unwrap_or_else(|e| die(&format!("SO_REUSEADDR: {}", errno_name(e))));
    if reuseport {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .unwrap_or_else(|e| die(&format!("SO_REUSEPORT: {}", errno_name(e))));
    }
    let (st, len) = to_sockaddr(&SocketAddr::new(ip, port));
    if unsafe { libc::bind(fd, &st as *const _ as *const libc::sockaddr, len) } < 0 {
        die(&format!("bind {ip}:{port}: {}", errno_name(errno())));
    }
    if unsafe { libc::listen(fd, backlog) } < 0 {
        die(&format!("listen: {}", errno_name(errno())));
    }
    fd
}

/// Non-blocking accept. Ok(None) when nothing is queued.
fn accept(lfd: i32) -> Result<Option<(i32, Option<SocketAddr>)>, i32> {
    let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let fd = unsafe {
        libc::accept4(
            lfd,
            &mut st as *mut _ as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = errno();
        if e == libc::EAGAIN || e == libc::EWOULDBLOCK || e == libc::EINTR {
            Ok(None)
        } else {
            Err(e)
        }
    } else {
        Ok(Some((fd, from_sockaddr(&st))))
    }
}

fn fmt_peer(p: &Option<SocketAddr>) -> String {
    p.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// Read and discard everything available now. Returns (bytes, Some(0) on EOF / Some(errno) on
/// error, None if the socket is still open and empty).
fn drain(fd: i32) -> (usize, Option<i32>) {
    let mut buf = [0u8; 16384];
    let mut total = 0;
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n > 0 {
            total += n as usize;
            continue;
        }
        if n == 0 {
            return (total, Some(0));
        }
        let e = errno();
        if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
            return (total, None);
        }
        if e == libc::EINTR {
            continue;
        }
        return (total, Some(e));
    }
}

// ---------------------------------------------------------------------------------------------
// Polling with stop/stdin awareness

fn stdin_is_pipe() -> bool {
    let mut st: libc::stat = unsafe { mem::zeroed() };
    if unsafe { libc::fstat(0, &mut st) } < 0 {
        return false;
    }
    (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

struct Poller {
    watch_stdin: bool,
}

impl Poller {
    fn new() -> Poller {
        Poller {
            watch_stdin: stdin_is_pipe(),
        }
    }

    /// Poll `fds` (fd, events) for at most `timeout`. Returns the revents per fd, or None when the
    /// process should stop (signal, or stdin EOF when stdin is a pipe).
    fn poll(&mut self, fds: &[(i32, i16)], timeout: Duration) -> Option<Vec<i16>> {
        if stopping() {
            return None;
        }
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&(fd, events)| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        if self.watch_stdin {
            pfds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                return if stopping() {
                    None
                } else {
                    Some(vec![0; fds.len()])
                };
            }
            die(&format!("poll: {}", errno_name(e)));
        }
        if self.watch_stdin {
            let s = pfds.pop().unwrap();
            if s.revents != 0 {
                let mut buf = [0u8; 512];
                let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                if n <= 0 {
                    // EOF (or error): our parent is gone or asked us to stop.
                    return None;
                }
            }
        }
        if stopping() {
            return None;
        }
        Some(pfds.iter().map(|p| p.revents).collect())
    }

    /// Sleep for `d` unless asked to stop. Returns false when stopping.
    fn sleep(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            if self.poll(&[], deadline - now).is_none() {
                return false;
            }
        }
    }
}

fn ready() {
    out(&format!("ready {}", std::process::id()));
}

// ---------------------------------------------------------------------------------------------
// listen

struct Conn {
    fd: i32,
    peer: Option<SocketAddr>,
    close_at: Option<Instant>,
}

/// Replaces this process with `path` serving listener `lfd`: same pid, new name.
fn exec_with_listener(path: &str, lfd: i32, ip: IpAddr, port: u16, accepting: bool) -> ! {
    // The socket was made close-on-exec; the new program must keep it.
    unsafe {
        libc::fcntl(lfd, libc::F_SETFD, 0);
    }
    let mut args = vec![
        path.to_owned(),
        "listen".to_owned(),
        "--fd".to_owned(),
        lfd.to_string(),
        "--addr".to_owned(),
        ip.to_string(),
        "--port".to_owned(),
        port.to_string(),
    ];
    if accepting {
        args.push("--accept".to_owned());
    }
    let c: Vec<std::ffi::CString> = args
        .iter()
        .map(|a| std::ffi::CString::new(a.as_str()).unwrap_or_else(|_| die("NUL in argument")))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = c.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    unsafe {
        libc::execv(ptrs[0], ptrs.as_ptr());
    }
    die(&format!("exec {path}: {}", errno_name(errno())))
}

fn cmd_listen(a: &Args) {
    let ip = a.addr(None);
    let port: u16 = a.req_num("port");
    let backlog: i32 = a.num("backlog").unwrap_or(128);
    let hold = a.num::<u64>("hold-ms").map(Duration::from_millis);
    let lfd = match a.num::<i32>("fd") {
        Some(fd) => fd,
        None => listener(ip, port, backlog, a.has("reuseport")),
    };
    if let Some(path) = a.str("exec-as") {
        exec_with_listener(path, lfd, ip, port, a.has("accept"));
    }
    if let Some(secs) = a.num::<i32>("defer-accept") {
        // Handshakes stay request sockets until the client's first data arrives: the test
        // controls when each one asks for a place in the accept queue.
        set_int_opt(lfd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs)
            .unwrap_or_else(|e| die(&format!("TCP_DEFER_ACCEPT: {}", errno_name(e))));
    }
    if let Some(n) = a.num::<u64>("nofile") {
        let mut rl: libc::rlimit = unsafe { mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } < 0 {
            die("getrlimit");
        }
        rl.rlim_cur = n as libc::rlim_t;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } < 0 {
            die(&format!("setrlimit NOFILE {n}: {}", errno_name(errno())));
        }
    }
    let accepting = a.has("accept");
    let mut poller = Poller::new();
    ready();
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds: Vec<(i32, i16)> = Vec::new();
        if accepting {
            fds.push((lfd, libc::POLLIN));
        }
        let first_conn = fds.len();
        for c in &conns {
            fds.push((c.fd, libc::POLLIN));
        }
        let now = Instant::now();
        let mut timeout = Duration::from_millis(200);
        for c in &conns {
            if let Some(t) = c.close_at {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
        }
        let Some(rev) = poller.poll(&fds, timeout) else {
            break;
        };
        // Connections: drain, notice EOF/RST.
        let mut keep = Vec::with_capacity(conns.len());
        for (i, c) in conns.drain(..).enumerate() {
            let r = rev[first_conn + i];
            let mut gone = None;
            if r != 0 {
                let (_, end) = drain(c.fd);
                gone = end;
            }
            match gone {
                Some(0) => {
                    out(&format!("conn_closed peer={}", fmt_peer(&c.peer)));
                    close(c.fd);
                }
                Some(e) if e == libc::ECONNRESET => {
                    out(&format!("conn_reset peer={}", fmt_peer(&c.peer)));
                    close(c.fd);
                }
                Some(e) => {
                    out(&format!(
                        "conn_error {} peer={}",
                        errno_name(e),
                        fmt_peer(&c.peer)
                    ));
                    close(c.fd);
                }
                None => {
                    if c.close_at.is_some_and(|t| Instant::now() >= t) {
                        drain(c.fd);
                        out(&format!("conn_done peer={}", fmt_peer(&c.peer)));
                        close(c.fd);
                    } else {
                        keep.push(c);
                    }
                }
            }
        }
        conns = keep;
        // Listener: accept everything queued (bounded per round).
        if accepting && rev[0] != 0 {
            for _ in 0..256 {
                match accept(lfd) {
                    Ok(Some((fd, peer))) => {
                        out(&format!("accepted peer={}", fmt_peer(&peer)));
                        conns.push(Conn {
                            fd,
                            peer,
                            close_at: hold.map(|h| Instant::now() + h),
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out(&format!("accept_error {}", errno_name(e)));
                        // The connection stays queued, so poll() would report it again at once:
                        // back off instead of spinning.
                        if !poller.sleep(Duration::from_millis(100)) {
                            STOP.store(true, Ordering::SeqCst);
                        }
                        break;
                    }
                }
            }
        }
        if stopping() {
            break;
        }
    }
    for c in conns {
        close(c.fd);
    }
    close(lfd);
}

// ---------------------------------------------------------------------------------------------
// connect

struct Attempt {
    fd: i32,
    lport: u16,
    result: Option<String>,
}

/// Start one non-blocking connect.
fn start_connect(dst: &SocketAddr) -> Attempt {
    let fd = match tcp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => {
            return Attempt {
                fd: -1,
                lport: 0,
                result: Some(errno_name(e)),
            }
        }
    };
    let (st, len) = to_sockaddr(dst);
    let r = unsafe { libc::connect(fd, &st as *const _ as *const libc::sockaddr, len) };
    // The local port is bound by now (even if the attempt already failed, inet_sport is kept).
    let lport = local_port(fd);
    let result = if r == 0 {
        Some("connected".to_string())
    } else {
        let e = errno();
        if e == libc::EINPROGRESS {
            None
        } else {
            Some(connect_result(e))
        }
    };
    Attempt { fd, lport, result }
}

/// Wait until the pending attempts resolve or the deadline passes.
fn finish_connects(poller: &mut Poller, atts: &mut [Attempt], deadline: Instant, zero: bool) {
    loop {
        let pending: Vec<usize> = (0..atts.len())
            .filter(|&i| atts[i].result.is_none())
            .collect();
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            for i in pending {
                atts[i].result = Some(if zero { "in_progress" } else { "timeout" }.into());
            }
            return;
        }
        let fds: Vec<(i32, i16)> = pending
            .iter()
            .map(|&i| (atts[i].fd, libc::POLLOUT))
            .collect();
        let Some(rev) = poller.poll(&fds, deadline - now) else {
            for i in pending {
                atts[i].result = Some("interrupted".into());
            }
            return;
        };
        for (k, &i) in pending.iter().enumerate() {
            if rev[k] == 0 {
                continue;
            }
            let mut err: i32 = 0;
            let mut len = mem::size_of::<i32>() as libc::socklen_t;
            let r = unsafe {
                libc::getsockopt(
                    atts[i].fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut i32 as *mut libc::c_void,
                    &mut len,
                )
            };
            if r < 0 {
                err = errno();
            }
            atts[i].result = Some(if err == 0 {
                "connected".to_string()
            } else {
                connect_result(err)
            });
        }
    }
}

fn cmd_connect(a: &Args) {
    let ip = a.addr(None);
    let port: u16 = a.req_num("port");
    let count: u32 = a.num("count").unwrap_or(1);
    let timeout = Duration::from_millis(a.num("timeout-ms").unwrap_or(5000));
    let zero = timeout.is_zero();
    let hold = a.num::<u64>("hold-ms").map(Duration::from_millis);
    let send_bytes = a.num::<usize>("send-bytes");
    let dst = SocketAddr::new(ip, port);
    let mut poller = Poller::new();
    ready();
    let mut atts: Vec<Attempt> = Vec::new();
    if a.has("nonblocking") {
        // Fire all attempts, then wait for them together.
        for _ in 0..count {
            atts.push(start_connect(&dst));
        }
        finish_connects(&mut poller, &mut atts, Instant::now() + timeout, zero);
        for (i, t) in atts.iter().enumerate() {
            out(&format!(
                "{} attempt={i} lport={}",
                t.result.as_deref().unwrap(),
                t.lport
            ));
        }
        if let Some(n) = send_bytes {
            if let Some(go) = a.str("go-file") {
                wait_for_file(&mut poller, go, Instant::now() + timeout);
            }
            for (i, t) in atts.iter().enumerate() {
                send_on_attempt(&mut poller, i, t, n, Instant::now() + timeout);
            }
        }
    } else {
        for i in 0..count {
            let mut one = [start_connect(&dst)];
            finish_connects(&mut poller, &mut one, Instant::now() + timeout, zero);
            let [t] = one;
            out(&format!(
                "{} attempt={i} lport={}",
                t.result.as_deref().unwrap(),
                t.lport
            ));
            if let Some(n) = send_bytes {
                send_on_attempt(&mut poller, i as usize, &t, n, Instant::now() + timeout);
            }
            let mut t = t;
            if t.fd >= 0 && t.result.as_deref() != Some("connected") {
                // A failed attempt's socket is of no use: keeping it would run thousands of
                // refused connects into RLIMIT_NOFILE.
                close(t.fd);
                t.fd = -1;
            }
            atts.push(t);
            if stopping() {
                break;
            }
        }
    }
    if let Some(h) = hold {
        poller.sleep(h);
    }
    for t in atts {
        if t.fd >= 0 {
            close(t.fd);
        }
    }
}

/// Writes `n` bytes on a connected attempt: `sent attempt=I`, or the error.
fn send_on_attempt(poller: &mut Poller, i: usize, t: &Attempt, n: usize, deadline: Instant) {
    if t.fd < 0 || t.result.as_deref() != Some("connected") {
        return;
    }
    match send_all(poller, t.fd, n, deadline) {
        Ok(()) => out(&format!("sent attempt={i}")),
        Err(e) => out(&format!("send_error attempt={i} {e}")),
    }
}

/// Waits (bounded) until `path` exists: the test creates it once the server side is in the
/// state it wants. Prints `go`; exits 1 on timeout, 0 when asked to stop.
fn wait_for_file(poller: &mut Poller, path: &str, deadline: Instant) {
    while !std::path::Path::new(path).exists() {
        if Instant::now() >= deadline {
            out("timeout");
            exit(1);
        }
        if !poller.sleep(Duration::from_millis(10)) {
            exit(0);
        }
    }
    out("go");
}

// ---------------------------------------------------------------------------------------------
// abort-close / linger0: one-shot servers

/// Wait (bounded) for one connection on a fresh listener. Exits 1 on timeout.
fn accept_one(poller: &mut Poller, lfd: i32, deadline: Instant) -> i32 {
    loop {
        let now = Instant::now();
        if now >= deadline {
            die("timed out waiting for a connection");
        }
        let Some(_) = poller.poll(&[(lfd, libc::POLLIN)], deadline - now) else {
            exit(0);
        };
        match accept(lfd) {
            Ok(Some((fd, peer))) => {
                out(&format!("accepted peer={}", fmt_peer(&peer)));
                return fd;
            }
            Ok(None) => continue,
            Err(e) => die(&format!("accept: {}", errno_name(e))),
        }
    }
}

fn unread_bytes(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return -1;
    }
    n
}

/// Wait (bounded) until `fd` has data to read. Exits 1 on timeout.
fn wait_readable(poller: &mut Poller, fd: i32, deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            die("timed out waiting for data");
        }
        let Some(rev) = poller.poll(&[(fd, libc::POLLIN)], deadline - now) else {
            exit(0);
        };
        if rev[0] != 0 {
            return;
        }
    }
}

fn cmd_abort_close(a: &Args) {
    let ip = a.addr(Some("127.0.0.1"));
    let port: u16 = a.req_num("port");
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(30_000));
    let lfd = listener(ip, port, 16, false);
    let mut poller = Poller::new();
    ready();
    let fd = accept_one(&mut poller, lfd, deadline);
    wait_readable(&mut poller, fd, deadline);
    let unread = unread_bytes(fd);
    // close() with unread data in the receive queue: the kernel answers with RST
    // (sk_rst_reason TCP_ABORT_ON_CLOSE).
    close(fd);
    out(&format!("closed unread={unread}"));
    close(lfd);
}

fn cmd_linger0(a: &Args) {
    let ip = a.addr(Some("127.0.0.1"));
    let port: u16 = a.req_num("port");
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(30_000));
    let lfd = listener(ip, port, 16, false);
    let mut poller = Poller::new();
    ready();
    let fd = accept_one(&mut poller, lfd, deadline);
    if a.has("wait-data") {
        wait_readable(&mut poller, fd, deadline);
    }
    // Leave nothing unread, or the close would be an abort_on_close instead.
    let (drained, _) = drain(fd);
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r < 0 {
        die(&format!("SO_LINGER: {}", errno_name(errno())));
    }
    close(fd);
    out(&format!("closed linger=0 drained={drained}"));
    close(lfd);
}

// ---------------------------------------------------------------------------------------------
// send: client counterpart of abort-close / linger0

fn cmd_send(a: &Args) {
    let ip = a.addr(None);
    let port: u16 = a.req_num("port");
    let bytes: usize = a.req_num("bytes");
    let timeout = Duration::from_millis(a.num("timeout-ms").unwrap_or(10_000));
    let deadline = Instant::now() + timeout;
    let mut poller = Poller::new();
    ready();
    let mut one = [start_connect(&SocketAddr::new(ip, port))];
    finish_connects(&mut poller, &mut one, deadline, false);
    let [t] = one;
    let res = t.result.as_deref().unwrap();
    if res != "connected" {
        out(&format!("{res} attempt=0 lport={}", t.lport));
        exit(1);
    }
    out(&format!("connected lport={}", t.lport));
    let fd = t.fd;
    let buf = vec![b'x'; 16384];
    let mut sent = 0usize;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len());
        let r = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const libc::c_void,
                n,
                libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let e = errno();
        if e == libc::EAGAIN || e == libc::EWOULDBLOCK || e == libc::EINTR {
            let now = Instant::now();
            if now >= deadline {
                out(&format!("sent {sent}"));
                out("timeout");
                exit(1);
            }
            if poller
                .poll(&[(fd, libc::POLLOUT)], deadline - now)
                .is_none()
            {
                exit(0);
            }
            continue;
        }
        out(&format!("sent {sent}"));
        out(&if e == libc::ECONNRESET {
            "reset".to_string()
        } else {
            errno_name(e)
        });
        exit(1);
    }
    out(&format!("sent {sent}"));
    if a.has("wait-close") {
        loop {
            let now = Instant::now();
            if now >= deadline {
                out("timeout");
                break;
            }
            let Some(rev) = poller.poll(&[(fd, libc::POLLIN)], deadline - now) else {
                break;
            };
            if rev[0] == 0 {
                continue;
            }
            match drain(fd) {
                (_, Some(0)) => {
                    out("eof");
                    break;
                }
                (_, Some(e)) if e == libc::ECONNRESET => {
                    out("reset");
                    break;
                }
                (_, Some(e)) => {
                    out(&errno_name(e));
                    break;
                }
                (_, None) => continue,
            }
        }
    }
    close(fd);
}

// ---------------------------------------------------------------------------------------------
// late-send / idle-linger0 / keepalive (connection_peers.rs)

/// The TCP state of `fd` (tcpi_state, the first byte of struct tcp_info), or None on error.
fn tcp_state_of(fd: i32) -> Option<u8> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0 && len > 0).then_some(buf[0])
}

fn so_error(fd: i32) -> i32 {
    let mut err: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        errno()
    } else {
        err
    }
}

/// Connect (bounded) or print the result and exit 1. Prints `connected lport=P`.
fn connect_or_exit(poller: &mut Poller, dst: SocketAddr, deadline: Instant) -> i32 {
    let mut one = [start_connect(&dst)];
    finish_connects(poller, &mut one, deadline, false);
    let [t] = one;
    let res = t.result.as_deref().unwrap();
    if res != "connected" {
        out(&format!("{res} attempt=0 lport={}", t.lport));
        exit(1);
    }
    out(&format!("connected lport={}", t.lport));
    t.fd
}

fn send_all(poller: &mut Poller, fd: i32, bytes: usize, deadline: Instant) -> Result<(), String> {
    let buf = vec![b'x'; 16384];
    let mut sent = 0usize;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len());
        let r = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const libc::c_void,
                n,
                libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            sent += r as usize;
            continue;
        }
        let e = errno();
        if e != libc::EAGAIN && e != libc::EWOULDBLOCK && e != libc::EINTR {
            return Err(errno_name(e));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err("timeout".into());
        }
        if poller
            .poll(&[(fd, libc::POLLOUT)], deadline - now)
            .is_none()
        {
            exit(0);
        }
    }
    Ok(())
}

/// Client that writes onto a connection the server has already closed: connect, send --bytes,
/// wait for the server's FIN (`eof`), send --late-bytes more (`late_sent N`), then wait until the
/// socket is CLOSE (`closed so_error=ERRNO`, after the peer's RST) or the deadline (`timeout`).
/// With --go-file PATH it waits (bounded) after `eof` until PATH exists (`go`) before the late
/// write. With --close-after-eof it closes at EOF instead (`closed_after_eof`): the server's socket
/// then goes to the full TIME_WAIT state.
fn cmd_late_send(a: &Args) {
    let ip = a.addr(None);
    let port: u16 = a.req_num("port");
    let bytes: usize = a.num("bytes").unwrap_or(10);
    let late: usize = a.num("late-bytes").unwrap_or(10);
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(10_000));
    let mut poller = Poller::new();
    ready();
    let fd = connect_or_exit(&mut poller, SocketAddr::new(ip, port), deadline);
    if let Err(e) = send_all(&mut poller, fd, bytes, deadline) {
        out(&e);
        exit(1);
    }
    out(&format!("sent {bytes}"));
    // Wait for the server's FIN.
    loop {
        let now = Instant::now();
        if now >= deadline {
            out("timeout");
            exit(1);
        }
        let Some(rev) = poller.poll(&[(fd, libc::POLLIN)], deadline - now) else {
            exit(0);
        };
        if rev[0] == 0 {
            continue;
        }
        match drain(fd) {
            (_, Some(0)) => break,
            (_, Some(e)) => {
                out(&errno_name(e));
                exit(1);
            }
            (_, None) => continue,
        }
    }
    out("eof");
    if a.has("close-after-eof") {
        close(fd);
        out("closed_after_eof");
        return;
    }
    if let Some(go) = a.str("go-file") {
        wait_for_file(&mut poller, go, deadline);
    }
    if let Err(e) = send_all(&mut poller, fd, late, deadline) {
        out(&e);
        exit(1);
    }
    out(&format!("late_sent {late}"));
    loop {
        if tcp_state_of(fd).and_then(|s| TcpState::try_from(s).ok()) == Some(TcpState::Close) {
            out(&format!("closed so_error={}", errno_name(so_error(fd))));
            break;
        }
        if Instant::now() >= deadline {
            out("timeout");
            break;
        }
        if !poller.sleep(Duration::from_millis(10)) {
            break;
        }
    }
    close(fd);
}

/// One-shot server: accept one connection, read the request, answer --reply-bytes, stay idle for
/// --idle-ms, then close with SO_LINGER {1, 0} (an RST). Prints `accepted peer=…`, `replied N`,
/// `closed linger=0 idle_ms=MS` (MS: measured from the reply to the close).
fn cmd_idle_linger0(a: &Args) {
    let ip = a.addr(Some("127.0.0.1"));
    let port: u16 = a.req_num("port");
    let idle = Duration::from_millis(a.req_num("idle-ms"));
    let reply: usize = a.num("reply-bytes").unwrap_or(4);
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(30_000));
    let lfd = listener(ip, port, 16, false);
    let mut poller = Poller::new();
    ready();
    let fd = accept_one(&mut poller, lfd, deadline);
    wait_readable(&mut poller, fd, deadline);
    drain(fd);
    if let Err(e) = send_all(&mut poller, fd, reply, deadline) {
        die(&format!("reply: {e}"));
    }
    let replied = Instant::now();
    out(&format!("replied {reply}"));
    if !poller.sleep(idle) {
        exit(0);
    }
    // Anything that arrived meanwhile would turn the close into abort_on_close.
    drain(fd);
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r < 0 {
        die(&format!("SO_LINGER: {}", errno_name(errno())));
    }
    let idle_ms = replied.elapsed().as_millis();
    close(fd);
    out(&format!("closed linger=0 idle_ms={idle_ms}"));
    close(lfd);
}

/// Client with TCP keepalive (--keepidle/--keepintvl seconds, --keepcnt probes): connect, print
/// `connected lport=P`, then wait, silent, until the connection fails: `error ERRNO elapsed_ms=MS`
/// (ETIMEDOUT once the probes are exhausted), `eof`, or `timeout` at the deadline.
fn cmd_keepalive(a: &Args) {
    let ip = a.addr(None);
    let port: u16 = a.req_num("port");
    let idle: i32 = a.num("keepidle").unwrap_or(1);
    let intvl: i32 = a.num("keepintvl").unwrap_or(1);
    let cnt: i32 = a.num("keepcnt").unwrap_or(2);
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(30_000));
    let dst = SocketAddr::new(ip, port);
    let mut poller = Poller::new();
    ready();
    let fd = match tcp_socket(&ip) {
        Ok(fd) => fd,
        Err(e) => die(&format!("socket: {}", errno_name(e))),
    };
    for (level, opt, val, name) in [
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle, "TCP_KEEPIDLE"),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            intvl,
            "TCP_KEEPINTVL",
        ),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt, "TCP_KEEPCNT"),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE"),
    ] {
        if let Err(e) = set_int_opt(fd, level, opt, val) {
            die(&format!("{name}: {}", errno_name(e)));
        }
    }
    let (st, len) = to_sockaddr(&dst);
    let r = unsafe { libc::connect(fd, &st as *const _ as *const libc::sockaddr, len) };
    let e = if r == 0 { 0 } else { errno() };
    let mut att = [Attempt {
        fd,
        lport: local_port(fd),
        result: match e {
            0 => Some("connected".into()),
            libc::EINPROGRESS => None,
            e => Some(connect_result(e)),
        },
    }];
    finish_connects(&mut poller, &mut att, deadline, false);
    let res = att[0].result.clone().unwrap();
    if res != "connected" {
        out(&format!("{res} attempt=0 lport={}", att[0].lport));
        exit(1);
    }
    out(&format!("connected lport={}", local_port(fd)));
    let since = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            out("timeout");
            break;
        }
        let Some(rev) = poller.poll(&[(fd, libc::POLLIN)], deadline - now) else {
            break;
        };
        if rev[0] == 0 {
            continue;
        }
        match drain(fd) {
            (_, Some(0)) => {
                let e = so_error(fd);
                if e != 0 {
                    out(&format!(
                        "error {} elapsed_ms={}",
                        errno_name(e),
                        since.elapsed().as_millis()
                    ));
                } else {
                    out("eof");
                }
                break;
            }
            (_, Some(e)) => {
                out(&format!(
                    "error {} elapsed_ms={}",
                    errno_name(e),
                    since.elapsed().as_millis()
                ));
                break;
            }
            (_, None) => continue,
        }
    }
    close(fd);
}

// ---------------------------------------------------------------------------------------------
// delayed-ack (listener_peers.rs): a raw-socket client that completes handshakes late, so the
// final ACKs meet a full accept queue (ACK-time accept-queue overflow). IPv4 only. The kernel of
// the client's netns answers the SYN-ACKs with RSTs unless they are filtered there (the test
// drops outgoing RSTs with iptables in the client netns).

static DA_GO: AtomicBool = AtomicBool::new(false);

extern "C" fn da_on_usr1(_: libc::c_int) {
    DA_GO.store(true, Ordering::SeqCst);
}

fn da_csum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for ch in p.chunks(2) {
            let w = if ch.len() == 2 {
                u16::from_be_bytes([ch[0], ch[1]])
            } else {
                u16::from_be_bytes([ch[0], 0])
            };
            sum += u32::from(w);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 20-byte TCP header (no options, no payload) with its checksum.
#[allow(clippy::too_many_arguments)]
fn da_segment(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = da_csum(&[&pseudo, &h]);
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

/// (sport, dport, seq, ack, flags) of a TCP segment from `from`, in an IPv4 packet.
fn da_parse(pkt: &[u8], from: std::net::Ipv4Addr) -> Option<(u16, u16, u32, u32, u8)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || i32::from(pkt[9]) != libc::IPPROTO_TCP {
        return None;
    }
    if pkt[12..16] != from.octets() {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let t = pkt.get(ihl..ihl + 20)?;
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((
        be16(&t[0..2]),
        be16(&t[2..4]),
        be32(&t[4..8]),
        be32(&t[8..12]),
        t[13],
    ))
}

fn da_send(fd: i32, dst: std::net::Ipv4Addr, seg: &[u8]) {
    let (st, len) = to_sockaddr(&SocketAddr::new(IpAddr::V4(dst), 0));
    let r = unsafe {
        libc::sendto(
            fd,
            seg.as_ptr() as *const libc::c_void,
            seg.len(),
            0,
            &st as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r < 0 {
        die(&format!("sendto {dst}: {}", errno_name(errno())));
    }
}

/// Every TCP segment from `from` queued on the raw socket now.
fn da_recv_all(fd: i32, from: std::net::Ipv4Addr) -> Vec<(u16, u16, u32, u32, u8)> {
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..4096 {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            break;
        }
        if let Some(s) = da_parse(&buf[..n as usize], from) {
            v.push(s);
        }
    }
    v
}

fn cmd_delayed_ack(a: &Args) {
    let IpAddr::V4(dst) = a.addr(None) else {
        usage("delayed-ack: --addr must be IPv4")
    };
    let src: std::net::Ipv4Addr = a
        .str("src")
        .unwrap_or_else(|| usage("--src is required"))
        .parse()
        .unwrap_or_else(|_| usage("--src: not an IPv4 address"));
    let port: u16 = a.req_num("port");
    let count: u16 = a.num("count").unwrap_or(4);
    let base: u16 = a
        .num("sport-base")
        .unwrap_or(20000 + (std::process::id() % 20000) as u16);
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms").unwrap_or(30_000));
    let linger = Duration::from_millis(a.num("linger-ms").unwrap_or(0));
    if count == 0 || u32::from(base) + u32::from(count) > 65535 {
        usage("delayed-ack: bad --count/--sport-base");
    }
    unsafe {
        let mut sa: libc::sigaction = mem::zeroed();
        sa.sa_sigaction = da_on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        die(&format!("raw socket: {}", errno_name(errno())));
    }
    let (st, len) = to_sockaddr(&SocketAddr::new(IpAddr::V4(src), 0));
    if unsafe { libc::bind(fd, &st as *const _ as *const libc::sockaddr, len) } < 0 {
        die(&format!("bind {src}: {}", errno_name(errno())));
    }
    let mut poller = Poller::new();
    ready();
    let isn = |i: u16| 0x1000_0000u32.wrapping_add(u32::from(i) << 16) ^ std::process::id();
    for i in 0..count {
        da_send(
            fd,
            dst,
            &da_segment(src, dst, base + i, port, isn(i), 0, 0x02),
        );
    }
    // sport -> the server's ISN
    let mut synacks: HashMap<u16, u32> = HashMap::new();
    let ours = |p: u16| p >= base && p - base < count;
    while synacks.len() < usize::from(count) {
        let now = Instant::now();
        if now >= deadline {
            out(&format!("synacks_timeout got={}", synacks.len()));
            exit(1);
        }
        if poller.poll(&[(fd, libc::POLLIN)], deadline - now).is_none() {
            exit(0);
        }
        for (sp, dp, seq, ack, fl) in da_recv_all(fd, dst) {
            if sp == port
                && ours(dp)
                && fl & 0x12 == 0x12
                && ack == isn(dp - base).wrapping_add(1)
                && !synacks.contains_key(&dp)
            {
                synacks.insert(dp, seq);
                out(&format!("synack sport={dp}"));
            }
        }
    }
    out(&format!("synacks {count}"));
    // Hold the handshakes half-open until the test says go (SIGUSR1), bounded.
    let mut synack_retrans = 0u32;
    while !DA_GO.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            die("timed out waiting for SIGUSR1");
        }
        if poller.poll(&[(fd, libc::POLLIN)], deadline - now).is_none() {
            exit(0);
        }
        synack_retrans += da_recv_all(fd, dst)
            .iter()
            .filter(|s| s.0 == port && ours(s.1) && s.4 & 0x12 == 0x12)
            .count() as u32;
    }
    for i in 0..count {
        let sp = base + i;
        let seg = da_segment(
            src,
            dst,
            sp,
            port,
            isn(i).wrapping_add(1),
            synacks[&sp].wrapping_add(1),
            0x10,
        );
        da_send(fd, dst, &seg);
    }
    out(&format!("acked {count} synack_retrans={synack_retrans}"));
    // Watch for the server's answers (RSTs with tcp_abort_on_overflow=1) for --linger-ms.
    let until = Instant::now() + linger;
    let mut rsts: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if poller.poll(&[(fd, libc::POLLIN)], until - now).is_none() {
            break;
        }
        for (sp, dp, _, _, fl) in da_recv_all(fd, dst) {
            if sp == port && ours(dp) && fl & 0x04 != 0 && rsts.insert(dp) {
                out(&format!("rst sport={dp}"));
            }
        }
    }
    out(&format!("done rsts={}", rsts.len()));
    close(fd);
}

fn main() {
    install_signal_handlers();
    let argv: Vec<String> = std::env::args().collect();
    let Some(cmd) = argv.get(1) else {
        usage("missing subcommand")
    };
    let rest = &argv[2..];
    match cmd.as_str() {
        "listen" => cmd_listen(&Args::parse(
            rest,
            &[
                "addr",
                "port",
                "backlog",
                "accept!",
                "nofile",
                "defer-accept",
                "hold-ms",
                "reuseport!",
                "exec-as",
                "fd",
            ],
        )),
        "connect" => cmd_connect(&Args::parse(
            rest,
            &[
                "addr",
                "port",
                "count",
                "timeout-ms",
                "nonblocking!",
                "hold-ms",
                "send-bytes",
                "go-file",
            ],
        )),
        "abort-close" => cmd_abort_close(&Args::parse(rest, &["addr", "port", "timeout-ms"])),
        "linger0" => cmd_linger0(&Args::parse(
            rest,
            &["addr", "port", "wait-data!", "timeout-ms"],
        )),
        "send" => cmd_send(&Args::parse(
            rest,
            &["addr", "port", "bytes", "wait-close!", "timeout-ms"],
        )),
        "late-send" => cmd_late_send(&Args::parse(
            rest,
            &[
                "addr",
                "port",
                "bytes",
                "late-bytes",
                "close-after-eof!",
                "go-file",
                "timeout-ms",
            ],
        )),
        "idle-linger0" => cmd_idle_linger0(&Args::parse(
            rest,
            &["addr", "port", "idle-ms", "reply-bytes", "timeout-ms"],
        )),
        "keepalive" => cmd_keepalive(&Args::parse(
            rest,
            &[
                "addr",
                "port",
                "keepidle",
                "keepintvl",
                "keepcnt",
                "timeout-ms",
            ],
        )),
        "delayed-ack" => cmd_delayed_ack(&Args::parse(
            rest,
            &[
                "addr",
                "src",
                "port",
                "count",
                "sport-base",
                "timeout-ms",
                "linger-ms",
            ],
        )),
        "-h" | "--help" | "help" => {
            println!("rst-trace-peer listen|connect|abort-close|linger0|send [options]");
        }
        other => usage(&format!("unknown subcommand {other:?}")),
    }
}
