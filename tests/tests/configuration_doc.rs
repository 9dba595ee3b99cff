//! docs/configuration.md is generated from the binaries' own `--help`, and
//! this test fails when the two drift apart. To regenerate after changing a
//! flag: `AUTOMC_UPDATE_DOCS=1 cargo test -p automc-tests --test configuration_doc`.
use std::path::{Path, PathBuf};
use std::process::Command;

/// One option as `--help` describes it.
#[derive(Debug, PartialEq)]
struct Opt {
    spec: String,
    env: String,
    default: String,
    values: String,
    meaning: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_automc-demo-backend"))
        .parent()
        .expect("binary dir")
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", name])
            .current_dir(repo())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    path
}

fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(bin(binary))
        .args(args)
        .arg("--help")
        // Help must not show values from the environment the test runs in.
        .env_clear()
        .env("COLUMNS", "2000")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{binary} {args:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Cut `[key: value]` out of `text`; returns the value.
fn take_bracket(text: &mut String, key: &str) -> String {
    let open = format!("[{key}: ");
    let Some(start) = text.find(&open) else {
        return String::new();
    };
    let Some(len) = text[start..].find(']') else {
        return String::new();
    };
    let value = text[start + open.len()..start + len].to_owned();
    text.replace_range(start..start + len + 1, "");
    value
}

/// Parse clap's option list (both the one-line and the two-line layout).
fn parse_options(help: &str) -> Vec<Opt> {
    let mut opts: Vec<(String, String)> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.trim_end() == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options || line.trim().is_empty() {
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent <= 6 && trimmed.starts_with('-') {
            let (spec, rest) = match trimmed.find("  ") {
                Some(i) => (trimmed[..i].to_owned(), trimmed[i..].trim().to_owned()),
                None => (trimmed.to_owned(), String::new()),
            };
            opts.push((spec, rest));
        } else if let Some(last) = opts.last_mut() {
            if !last.1.is_empty() {
                last.1.push(' ');
            }
            last.1.push_str(trimmed);
        }
    }
    opts.into_iter()
        .filter(|(spec, _)| !spec.contains("--help") && !spec.contains("--version"))
        .map(|(spec, mut text)| {
            let env = take_bracket(&mut text, "env");
            let env = env.trim_end_matches('=').to_owned();
            let default = take_bracket(&mut text, "default");
            let values = take_bracket(&mut text, "possible values");
            Opt {
                spec,
                env,
                default,
                values,
                meaning: text.split_whitespace().collect::<Vec<_>>().join(" "),
            }
        })
        .collect()
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn table(title: &str, command: &str, opts: &[Opt]) -> String {
    let mut out = format!("## {title}\n\n`{command}`\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for o in opts {
        let env = if o.env.is_empty() {
            String::new()
        } else {
            format!("`{}`", o.env)
        };
        let default = if o.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", cell(&o.default))
        };
        let mut meaning = cell(&o.meaning);
        if !o.values.is_empty() {
            meaning.push_str(&format!(" (one of: {})", cell(&o.values)));
        }
        out.push_str(&format!(
            "| `{}` | {env} | {default} | {meaning} |\n",
            cell(&o.spec)
        ));
    }
    out.push('\n');
    out
}

fn render() -> String {
    let mut doc = String::from(
        "# Configuration\n\n\
         Every flag of both binaries, with the environment variable it also reads and its default.\n\
         This file is generated from the binaries' `--help` by `tests/tests/configuration_doc.rs`,\n\
         which fails when the two drift apart; regenerate it with\n\
         `AUTOMC_UPDATE_DOCS=1 cargo test -p automc-tests --test configuration_doc`.\n\n\
         Durations are written like `500ms`, `2s`, `90s`, `1m`. A flag given on the command line wins\n\
         over its environment variable. Variables of secrets (tokens, the DSN) are never echoed by\n\
         `--help`. The Go fork's variables `AUTOMC_DSN`, `AUTOMC_WAKER_URL` and `AUTOMC_WAKER_TOKEN` are\n\
         read as fallbacks where the table says so. Log filtering uses `RUST_LOG` (for example\n\
         `RUST_LOG=info,syncd=debug`).\n\n",
    );
    doc.push_str(&table(
        "syncd serve",
        "syncd serve [OPTIONS]  (also: syncd [OPTIONS])",
        &parse_options(&help("syncd", &["serve"])),
    ));
    doc.push_str(&table(
        "syncd migrate",
        "syncd migrate [OPTIONS]",
        &parse_options(&help("syncd", &["migrate"])),
    ));
    doc.push_str(&table(
        "syncd check",
        "syncd check [OPTIONS]",
        &parse_options(&help("syncd", &["check"])),
    ));
    for cmd in ["routes", "edges", "wakes", "servers", "players"] {
        doc.push_str(&table(
            &format!("syncd {cmd}"),
            &format!("syncd {cmd} [OPTIONS]  (asks a running syncd; prints a table, or JSON with --json)"),
            &parse_options(&help("syncd", &[cmd])),
        ));
    }
    doc.push_str(&table(
        "edge",
        "edge [OPTIONS] --syncd <URL>",
        &parse_options(&help("edge", &[])),
    ));
    doc
}

#[test]
fn help_parser_reads_both_layouts() {
    let one_line = "Options:\n      --database-url <URL>  Postgres DSN [env: SYNCD_DATABASE_URL]\n  -h, --help  Print help\n";
    let two_line = "Options:\n      --listen <LISTEN>\n          Player listen address [env: EDGE_LISTEN=] [default: 0.0.0.0:25565]\n\n      --send-proxy-protocol\n          Send a PROXY v2 header\n          to backends [env: EDGE_SEND_PROXY_PROTOCOL=]\n";
    assert_eq!(
        parse_options(one_line),
        vec![Opt {
            spec: "--database-url <URL>".into(),
            env: "SYNCD_DATABASE_URL".into(),
            default: String::new(),
            values: String::new(),
            meaning: "Postgres DSN".into(),
        }]
    );
    let opts = parse_options(two_line);
    assert_eq!(opts.len(), 2);
    assert_eq!(opts[0].default, "0.0.0.0:25565");
    assert_eq!(opts[1].meaning, "Send a PROXY v2 header to backends");
    assert_eq!(opts[1].env, "EDGE_SEND_PROXY_PROTOCOL");
}

#[test]
fn configuration_doc_matches_help() {
    let want = render();
    let path = repo().join("docs/configuration.md");
    if std::env::var_os("AUTOMC_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/configuration.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is out of date with --help; regenerate with \
         AUTOMC_UPDATE_DOCS=1 cargo test -p automc-tests --test configuration_doc"
    );
}
