//! The `levee` binary under another name, so that end-to-end tests can run it as a child
//! process (and kill it) through `CARGO_BIN_EXE_levee-under-test`.

fn main() -> std::process::ExitCode {
    levee_proxy::cli::main()
}
