//! SIGHUP reload on the real binary: an added topic appears, a removed one closes only its
//! clients, an invalid file changes nothing (and is logged with line:col), and clients of
//! unchanged topics keep their connection and miss nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;

fn topic(name: &str) -> String {
    format!("[[topic]]\nname = \"{name}\"\npath = \"/{name}\"\nsource.poll = {{ url = \"/{name}-src\", interval_ms = 50 }}\n\n")
}

fn hangup(pid: u32) {
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_keeps_unchanged_clients() {
    let backend = TestBackend::start().await;
    for name in ["a", "b", "c"] {
        backend.set(
            &format!("/{name}-src"),
            Behaviour::Json(format!("{{\"{name}\":1}}")),
        );
    }
    let (port, admin_port) = (free_port(), free_port());
    let dir = std::env::temp_dir();
    let config = dir.join(format!("sidestream-reload-{port}.toml"));
    let log = dir.join(format!("sidestream-reload-{port}.log"));
    let head = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\ndrain_timeout_ms = 500\n\n\
         [upstream]\nbase_url = \"http://127.0.0.1:{}\"\n\n",
        backend.port
    );
    std::fs::write(&config, format!("{head}{}{}", topic("a"), topic("b"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidestream"))
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    eventually("listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;

    let mut a = SseClient::connect(port, "/a", &[]).await;
    assert_eq!(a.next_event().await.unwrap().data.as_deref(), Some("{\"a\":1}"));
    let mut b = SseClient::connect(port, "/b", &[]).await;
    assert_eq!(b.next_event().await.unwrap().data.as_deref(), Some("{\"b\":1}"));
    assert_eq!(
        get(port, "/c", &[]).await.status,
        404,
        "not a topic yet: passed through"
    );

    // Remove b, add c, keep a exactly as it was.
    std::fs::write(&config, format!("{head}{}{}", topic("a"), topic("c"))).unwrap();
    hangup(child.id());
    while b.next_block().await.is_some() {}
    assert!(b.ended, "the removed topic's client was closed");
    let mut c = SseClient::connect(port, "/c", &[]).await;
    assert_eq!(c.next_event().await.unwrap().data.as_deref(), Some("{\"c\":1}"));
    assert_eq!(
        get(port, "/b", &[]).await.status,
        404,
        "b is gone: passed through to the backend"
    );

    // An invalid file changes nothing and says where the problem is.
    std::fs::write(
        &config,
        format!(
            "{head}{}[[topic]]\nname = \"a\"\npath = \"/d\"\nbogus = 1\n",
            topic("a")
        ),
    )
    .unwrap();
    hangup(child.id());
    eventually("the rejection is logged", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reload rejected")
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    let location = format!("{}:", config.display());
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&location) && l.contains(": error: unknown field `bogus`")),
        "{logged}"
    );
    assert_eq!(get(port, "/c", &[]).await.status, 200, "c still served");

    // The unchanged topic's client never left and misses nothing.
    backend.set("/a-src", Behaviour::Json("{\"a\":2}".into()));
    let next = a.next_event().await.unwrap();
    assert_eq!(next.data.as_deref(), Some("{\"a\":2}"));
    assert!(next.id.unwrap().ends_with("-2"), "same instance, next message");

    terminate(&mut child).await;
    let _ = std::fs::remove_file(config);
    let _ = std::fs::remove_file(log);
}
