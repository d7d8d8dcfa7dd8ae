//! The traffic layer against the app straight and against nginx, side by
//! side in one run on loopback.
//!
//! Run: `cargo bench -p slipway --bench proxy --profile dev` (nginx and wrk
//! from Debian: `apt-get install nginx-light wrk`). The machine has two
//! cores: the proxy under test (`slipway proxy`, or nginx with one worker)
//! is pinned to core 0; the app and the load generator share core 1, so
//! each proxy gets one core to itself and figures are per core.
//!
//! - closed loops with `wrk` (50 connections, `SLIPWAY_PROXY_BENCH_SECS`
//!   each, default 8; `SLIPWAY_PROXY_BENCH_ROUNDS` rounds, default 3,
//!   interleaved, medians reported): keep-alive, and a new connection per
//!   request;
//!   requests per second, p50 and p99, for the app straight, Slipway and
//!   nginx, and the ratio Slipway / nginx;
//! - a fixed rate (2,000 requests a second over 16 keep-alive connections,
//!   latency measured from when each request was due, so a stall is not
//!   hidden): the latency each proxy adds at p50 and p99 over the app
//!   straight;
//! - the switch: how long from the agent's route change until every new
//!   request reaches the other release (the control request, then the
//!   first request answered by the new release), 20 times;
//! - memory: each proxy's RSS with 1,000 client connections open through it.
//!
//! The app is this binary in another role (`SLIPWAY_PROXY_BENCH_BACKEND`):
//! a hyper HTTP/1.1 server on one thread answering a short body.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND_VAR: &str = "SLIPWAY_PROXY_BENCH_BACKEND";

fn main() {
    if let Ok(role) = std::env::var(BACKEND_VAR) {
        backend(&role);
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err()
        || Command::new("nginx").arg("-v").output().is_err()
    {
        eprintln!("the proxy bench needs wrk and nginx: apt-get install nginx-light wrk");
        std::process::exit(2);
    }
    raise_nofile();
    let secs: u64 = std::env::var("SLIPWAY_PROXY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rounds: usize = std::env::var("SLIPWAY_PROXY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let app = port();
    let app_b = port();
    let _backend = spawn_backend(app, "release-a");
    let _backend_b = spawn_backend(app_b, "release-b");
    let slipway_port = port();
    let nginx_port = port();
    let proxy = spawn_proxy(dir.path());
    let control = slipway::traffic::Control::new(&dir.path().join("state"), None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let route = |to: u16, release: &str| slipway::traffic::Route {
        name: "bench/production".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], slipway_port)),
        mode: slipway::traffic::Mode::Http,
        backends: vec![slipway::traffic::Backend {
            release: release.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], to)),
            weight: 1,
        }],
    };
    rt.block_on(control.apply(vec![route(app, "release-a")]))
        .expect("the proxy takes the route");
    let nginx = Nginx(spawn_nginx(dir.path(), nginx_port, app));
    for p in [app, app_b, slipway_port, nginx_port] {
        wait_listening(p);
    }
    pin_self(1);

    println!(
        "# traffic layer bench: {rounds} interleaved rounds of {secs} s per target, medians; proxies on core 0, app and load on core 1\n"
    );
    let targets = [
        ("app straight", app),
        ("slipway proxy", slipway_port),
        ("nginx (1 worker)", nginx_port),
    ];
    for (title, close) in [("keep-alive", false), ("new connection per request", true)] {
        println!("## closed loop, wrk -c50, {title}\n");
        println!("| target | requests/s | p50 | p99 |");
        println!("| --- | ---: | ---: | ---: |");
        // Rounds interleave the targets, so a noisy second hits all three;
        // each figure is the median of its rounds.
        let mut runs: Vec<Vec<Wrk>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, (_, port)) in targets.iter().enumerate() {
                runs[i].push(wrk(*port, secs, close));
            }
        }
        let mut results = Vec::new();
        for ((name, _), r) in targets.iter().zip(runs) {
            let r = Wrk {
                rps: median(r.iter().map(|w| w.rps).collect()),
                p50: median(r.iter().map(|w| w.p50).collect()),
                p99: median(r.iter().map(|w| w.p99).collect()),
            };
            println!("| {name} | {:.0} | {} | {} |", r.rps, us(r.p50), us(r.p99));
            results.push(r);
        }
        let ratio = results[1].rps / results[2].rps;
        println!(
            "\nslipway / nginx throughput: {ratio:.2}; p50 {:.2}, p99 {:.2} (latency ratios, lower is better)\n",
            results[1].p50 / results[2].p50,
            results[1].p99 / results[2].p99
        );
        let mode = if close { "new_conn" } else { "keepalive" };
        for ((name, _), r) in targets.iter().zip(&results) {
            let key = name.split_whitespace().next().unwrap_or(name);
            common::record(
                "proxy",
                &format!("{mode}_{key}_rps"),
                r.rps,
                "requests/s",
                &format!("{title}, wrk -c50: {name}"),
            );
            common::record(
                "proxy",
                &format!("{mode}_{key}_p99_us"),
                r.p99,
                "µs",
                &format!("{title}, wrk -c50: {name}, p99"),
            );
        }
        common::record(
            "proxy",
            &format!("{mode}_ratio"),
            ratio,
            "×",
            &format!("{title}: slipway / nginx throughput"),
        );
        common::record(
            "proxy",
            &format!("goal_{mode}"),
            f64::from(u8::from(ratio >= 1.0)),
            "met",
            &format!("goal: {title} throughput per core at least nginx's"),
        );
    }

    println!("## fixed rate: 2000 requests/s over 16 keep-alive connections, {secs} s\n");
    println!("| target | p50 | p99 | added p50 | added p99 |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut fixed: Vec<(Vec<f64>, Vec<f64>)> =
        targets.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for _ in 0..rounds {
        for (i, (_, port)) in targets.iter().enumerate() {
            let (p50, p99) = rt.block_on(fixed_rate(*port, 2000, secs));
            fixed[i].0.push(p50);
            fixed[i].1.push(p99);
        }
    }
    let mut base = None;
    for ((name, _), (p50s, p99s)) in targets.iter().zip(fixed) {
        let (p50, p99) = (median(p50s), median(p99s));
        let (b50, b99) = *base.get_or_insert((p50, p99));
        println!(
            "| {name} | {} | {} | {} | {} |",
            us(p50),
            us(p99),
            us(p50 - b50),
            us(p99 - b99)
        );
        if *name != "app straight" {
            let key = name.split_whitespace().next().unwrap_or(name);
            common::record(
                "proxy",
                &format!("fixed_{key}_added_p50_us"),
                p50 - b50,
                "µs",
                &format!("2,000 requests/s: latency {name} adds, p50"),
            );
            common::record(
                "proxy",
                &format!("fixed_{key}_added_p99_us"),
                p99 - b99,
                "µs",
                &format!("2,000 requests/s: latency {name} adds, p99"),
            );
        }
    }

    println!(
        "\n## switch: route change until every new request reaches the other release (20 times)\n"
    );
    let mut applied = Vec::new();
    let mut reached = Vec::new();
    for i in 0..20 {
        let (to, release) = if i % 2 == 0 {
            (app_b, "release-b")
        } else {
            (app, "release-a")
        };
        let started = Instant::now();
        rt.block_on(control.apply(vec![route(to, release)]))
            .unwrap();
        applied.push(started.elapsed().as_secs_f64() * 1e6);
        loop {
            if get_body(slipway_port).is_some_and(|b| b == release) {
                break;
            }
        }
        reached.push(started.elapsed().as_secs_f64() * 1e6);
    }
    applied.sort_by(f64::total_cmp);
    reached.sort_by(f64::total_cmp);
    println!(
        "control request: median {}, max {}; first request on the new release: median {}, max {}\n",
        us(applied[10]),
        us(applied[19]),
        us(reached[10]),
        us(reached[19])
    );
    common::record(
        "proxy",
        "switch_median_us",
        reached[10],
        "µs",
        "route change until the first request reaches the new release, median of 20",
    );
    common::record(
        "proxy",
        "switch_max_us",
        reached[19],
        "µs",
        "route change until the first request reaches the new release, max of 20",
    );
    common::record(
        "proxy",
        "goal_switch",
        f64::from(u8::from(reached[19] < 10_000.0)),
        "met",
        "goal: all traffic on the new release within 10 ms",
    );
    rt.block_on(control.apply(vec![route(app, "release-a")]))
        .unwrap();

    println!("## memory with 1,000 client connections open (keep-alive, one request each)\n");
    println!("| proxy | RSS idle | RSS with 1,000 connections |");
    println!("| --- | ---: | ---: |");
    let nginx_worker = nginx_worker_pid(dir.path());
    for (name, port, pid) in [
        ("slipway proxy", slipway_port, proxy.id()),
        ("nginx worker", nginx_port, nginx_worker),
    ] {
        let idle = common::rss_mb(pid);
        let held = open_connections(port, 1000);
        std::thread::sleep(Duration::from_millis(300));
        let busy = common::rss_mb(pid);
        drop(held);
        println!("| {name} | {idle:.1} MB | {busy:.1} MB |");
        let key = if name.starts_with("slipway") {
            "slipway"
        } else {
            "nginx"
        };
        common::record(
            "proxy",
            &format!("{key}_rss_idle_mb"),
            idle,
            "MB",
            &format!("{name}: RSS idle"),
        );
        common::record(
            "proxy",
            &format!("{key}_rss_1000_mb"),
            busy,
            "MB",
            &format!("{name}: RSS with 1,000 keep-alive connections open"),
        );
        if key == "slipway" {
            common::record(
                "proxy",
                "goal_rss",
                f64::from(u8::from(busy < 15.0)),
                "met",
                "goal: traffic layer under 15 MB RSS at 1,000 connections",
            );
        }
    }
    drop(nginx);
    common::record_machine_load("proxy");
}

struct Wrk {
    rps: f64,
    /// Microseconds.
    p50: f64,
    p99: f64,
}

fn wrk(port: u16, secs: u64, close: bool) -> Wrk {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t1", "-c50", "--latency"])
        .arg(format!("-d{secs}s"));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix} in wrk's output:\n{text}"))
    };
    let rps = find("Requests/sec:").parse().unwrap();
    Wrk {
        rps,
        p50: parse_latency(&find("50%")),
        p99: parse_latency(&find("99%")),
    }
}

/// wrk's "123.45us", "1.20ms", "2.00s" in microseconds.
fn parse_latency(text: &str) -> f64 {
    let (n, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// Requests at a fixed rate over `conns` keep-alive connections; latency
/// from when each request was due. (p50, p99) in microseconds.
async fn fixed_rate(port: u16, rate: u64, secs: u64) -> (f64, f64) {
    const CONNS: u64 = 16;
    let total = rate * secs;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for k in 0..CONNS {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake::<
                _,
                http_body_util::Empty<bytes::Bytes>,
            >(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            let mut i = k;
            while i < total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                tokio::time::sleep_until(due).await;
                let req = http::Request::get("/")
                    .header("host", "bench")
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                lat.push(due.elapsed().as_secs_f64() * 1e6);
                i += CONNS;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (at(0.50), at(0.99))
}

/// `GET /` on a new connection: the body.
fn get_body(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split("\r\n\r\n").nth(1)?.to_string())
}

/// `n` connections, each having made one keep-alive request, held open.
fn open_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).unwrap();
        held.push(s);
    }
    held
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child killed when dropped.
struct Killed(Child);

impl Killed {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_backend(port: u16, name: &str) -> Killed {
    let exe = std::env::current_exe().unwrap();
    Killed(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(exe)
            .env(BACKEND_VAR, format!("{port}:{name}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn spawn_proxy(dir: &Path) -> Killed {
    Killed(
        Command::new("taskset")
            .args([
                "-c",
                "0",
                env!("CARGO_BIN_EXE_slipway"),
                "proxy",
                "--state-dir",
            ])
            .arg(dir.join("state"))
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn spawn_nginx(dir: &Path, port: u16, app: u16) -> Killed {
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/nb;\n  proxy_temp_path {d}/np;\n\
           fastcgi_temp_path {d}/nf;\n  uwsgi_temp_path {d}/nu;\n  scgi_temp_path {d}/ns;\n\
           upstream app {{ server 127.0.0.1:{app}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port} backlog=1024;\n    location / {{\n\
               proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n    }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Killed(
        Command::new("taskset")
            .args(["-c", "0", "nginx", "-g", "daemon off;", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// nginx's master stops its worker on SIGQUIT; a SIGKILL would orphan it.
struct Nginx(Killed);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.0.id() as i32, libc::SIGQUIT) };
        let _ = self.0.0.wait();
    }
}

/// nginx's worker (the master only hands connections to it).
fn nginx_worker_pid(dir: &Path) -> u32 {
    let master: u32 = std::fs::read_to_string(dir.join("nginx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(master)
        })
        .unwrap_or(master)
}

fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn raise_nofile() {
    let limit = libc::rlimit {
        rlim_cur: 16384,
        rlim_max: 16384,
    };
    // SAFETY: setrlimit reads the struct; failure leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

/// The app: a hyper HTTP/1.1 server on one thread answering its name.
fn backend(role: &str) {
    let (port, name) = role.split_once(':').expect("PORT:NAME");
    let port: u16 = port.parse().unwrap();
    let body = bytes::Bytes::from(name.to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
