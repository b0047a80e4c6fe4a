//! `hvsim run FILE...` prints one result line per statement;
//! `hvsim check FILE...` compares each `=>` expectation and prints
//! `PASS file:line` / `FAIL file:line: ...` and `N passed, M failed`.

use std::process::ExitCode;

use hvsim::script::{Tally, run_script};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, files) = match args.split_first() {
        Some((m, f)) if (m == "run" || m == "check") && !f.is_empty() => (m.as_str(), f),
        _ => {
            eprintln!("usage: hvsim run|check FILE...");
            return ExitCode::from(2);
        }
    };
    let mut total = Tally::default();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("FAIL {file}:0: cannot read: {e}");
                total.failed += 1;
                continue;
            }
        };
        let t = run_script(file, &text, mode == "check", &mut |line| println!("{line}"));
        total.passed += t.passed;
        total.failed += t.failed;
    }
    if mode == "check" {
        println!("{} passed, {} failed", total.passed, total.failed);
    }
    if total.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
