//! `hvsim run FILE...` prints one result line per statement;
//! `hvsim check FILE...` compares each `=>` expectation and prints
//! `PASS file:line` / `FAIL file:line: ...` and `N passed, M failed`;
//! `hvsim abi-suite --arch x86_64|aarch64` runs the ABI suite on a machine
//! built like QEMU's and prints its transcript (`src/abisuite.rs`).

use std::process::ExitCode;

use hvsim::script::{Tally, run_script};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("abi-suite") {
        return abi_suite(&args[1..]);
    }
    let (mode, files) = match args.split_first() {
        Some((m, f)) if (m == "run" || m == "check") && !f.is_empty() => (m.as_str(), f),
        _ => {
            eprintln!("usage: hvsim run|check FILE...  |  hvsim abi-suite --arch x86_64|aarch64");
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

/// `hvsim abi-suite --arch ARCH`: the transcript on stdout; exit status 0
/// only when every case held and the machine is sound afterwards.
fn abi_suite(args: &[String]) -> ExitCode {
    use hvsim::abisuite::{Config, Stdout, run};
    use sluice_abi_suite::Arch;
    let arch = match args {
        [flag, a] if flag == "--arch" && a == "x86_64" => Arch::X86_64,
        [flag, a] if flag == "--arch" && a == "aarch64" => Arch::Aarch64,
        _ => {
            eprintln!("usage: hvsim abi-suite --arch x86_64|aarch64");
            return ExitCode::from(2);
        }
    };
    match run(&Config::qemu(arch), &mut Stdout) {
        Ok(out) => {
            for p in &out.problems {
                eprintln!("hvsim abi-suite: {p}");
            }
            if out.summary.broken == 0 && out.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("hvsim abi-suite: {e}");
            ExitCode::FAILURE
        }
    }
}
