//! The README's run command as a newcomer uses it: `pushrelay dev` starts, prints two `curl`
//! commands, and pasting them makes the delivery stage log a badge push; Ctrl-C exits
//! cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn printed_curl_commands_produce_a_logged_badge_push() {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushrelay"))
        .args([
            "--log-format",
            "json",
            "dev",
            "--listen",
            &listen,
            "--admin-addr",
            &admin,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pushrelay dev starts");
    let (lines_tx, lines) = mpsc::channel::<(bool, String)>();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for (is_log, stream) in [
        (false, Box::new(stdout) as Box<dyn std::io::Read + Send>),
        (true, Box::new(stderr)),
    ] {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send((is_log, line));
            }
        });
    }

    // The banner: collect every printed curl command (they span several lines).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut commands: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut logs: Vec<serde_json::Value> = Vec::new();
    while commands.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (is_log, line) = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no curl commands printed; got {commands:?}"));
        if is_log {
            logs.extend(serde_json::from_str::<serde_json::Value>(&line).ok());
            continue;
        }
        match current.take() {
            Some(mut command) => {
                command.push('\n');
                command.push_str(&line);
                if line.ends_with('\\') {
                    current = Some(command);
                } else {
                    commands.push(command);
                }
            }
            None if line.starts_with("curl ") => current = Some(line),
            None => {}
        }
    }

    let pasted = Instant::now();
    for command in &commands {
        let output = Command::new("sh")
            .args(["-c", command])
            .output()
            .expect("curl runs");
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(
            body.contains(r#""accepted":1"#),
            "`{command}` answered {body} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let is_push = |log: &serde_json::Value| {
        log.pointer("/message").and_then(|m| m.as_str()) == Some("push (log provider)")
            && log.pointer("/badge").and_then(|b| b.as_u64()) == Some(3)
            && log.pointer("/device").and_then(|d| d.as_str()) == Some("0123abcd")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logs.iter().any(is_push) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok((true, line)) => logs.extend(serde_json::from_str::<serde_json::Value>(&line).ok()),
            Ok((false, _)) => {}
            Err(_) => panic!(
                "no badge push logged; last logs: {:?}",
                logs.iter().rev().take(10).collect::<Vec<_>>()
            ),
        }
    }
    eprintln!(
        "badge push logged {:?} after the commands were run",
        pasted.elapsed()
    );

    // Ctrl-C: drains, commits and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pushrelay dev did not exit after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "clean exit after Ctrl-C, got {exit}");
}
