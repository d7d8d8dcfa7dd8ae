//! Test fixture: a plugin that misbehaves on request (`mode` param), to prove
//! the sandbox holds. Each mode tries one thing a plugin must not get away
//! with; the health message says what happened so tests can assert on it.

use slipway_plugin_sdk::prelude::*;

#[derive(Deserialize)]
struct Params {
    mode: String,
    #[serde(default)]
    target: String,
}

struct Hostile;

impl Plugin for Hostile {
    const NAME: &'static str = "hostile";
    const DESCRIPTION: &'static str = "Misbehaves on purpose (test fixture).";
    type Params = Params;
    fn params_schema() -> Value {
        json!({ "type": "object", "required": ["mode"],
                "properties": { "mode": { "type": "string" }, "target": { "type": "string" } } })
    }
}

/// Ok(text) when the attempt worked (a sandbox failure), Err(why) when it
/// was stopped.
fn attempt(ctx: &StepContext, p: &Params) -> Result<String, String> {
    match p.mode.as_str() {
        "ok" => Ok("fine".into()),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "handles" => {
            // Each read_dir holds a descriptor and a directory stream in the
            // host, outside the plugin's own memory.
            for held in 0..1_000_000 {
                match std::fs::read_dir(&ctx.release.dir) {
                    Ok(dir) => std::mem::forget(dir),
                    Err(e) => return Err(format!("read_dir failed after {held}: {e}")),
                }
            }
            Ok("held a million directory handles".into())
        }
        "panic" => panic!("boom: the plugin panicked on purpose"),
        "read" => std::fs::read_to_string(&p.target).map_err(|e| format!("read {}: {e}", p.target)),
        "write" => std::fs::write(&p.target, b"pwned")
            .map(|()| format!("wrote {}", p.target))
            .map_err(|e| format!("write {}: {e}", p.target)),
        "list-release" => std::fs::read_dir(&ctx.release.dir)
            .map(|d| format!("{} entries", d.count()))
            .map_err(|e| format!("list {}: {e}", ctx.release.dir)),
        "http" => http::get(&p.target).map(|r| format!("status {}", r.status)),
        "exec" => exec::Command::new(&p.target)
            .arg("-c")
            .arg("echo ran")
            .run()
            .map(|o| format!("ran: {}", o.tail(5))),
        "exec-sleep" => exec::Command::new("sh")
            .arg("-c")
            .arg("sleep 60")
            .run()
            .map(|o| o.status_text()),
        "env" => Ok(format!(
            "HOME={:?} PATH={:?}",
            std::env::var("HOME").ok(),
            std::env::var("PATH").ok()
        )),
        "log-secret" => {
            let value = secret(&p.target)?;
            log::info(&format!("the secret is {value}"));
            eprintln!("stderr also has {value}");
            Err(format!("failing with {value} in the error"))
        }
        "secret" => secret(&p.target),
        "big-output" => Err("x".repeat(8 << 20)),
        "big-log" => {
            for i in 0..100_000 {
                log::info(&format!("line {i} {}", "y".repeat(100)));
            }
            Ok("logged".into())
        }
        other => Err(format!("unknown mode {other}")),
    }
}

impl HealthCheck for Hostile {
    fn check(ctx: &StepContext, p: Params) -> HealthReport {
        match attempt(ctx, &p) {
            Ok(m) => HealthReport::healthy(m),
            Err(e) => HealthReport::unhealthy(e),
        }
    }
}

impl SmokeTest for Hostile {
    fn smoke_test(ctx: &StepContext, p: Params) -> Result<String, String> {
        attempt(ctx, &p)
    }
}

slipway_plugin_sdk::export!(Hostile: health_check, smoke_test);
