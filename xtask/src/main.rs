//! `cargo xtask <task>`: developer tasks that drive real processes.
//!   bench [--duration SECONDS] [--connections 100,10] [--only core|sizes|workers|wasmtime]

use xtask::bench;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => match bench::Options::parse(&args[1..]) {
            Ok(options) => bench::run(&options),
            Err(e) => {
                eprintln!("xtask bench: {e}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("usage: cargo xtask bench [--duration SECONDS] [--connections 100,10] [--only core|sizes|workers|wasmtime]");
            std::process::exit(2);
        }
    }
}
