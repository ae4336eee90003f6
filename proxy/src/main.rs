//! The `levee` binary: everything lives in the library; see `levee_proxy::cli`.

fn main() -> std::process::ExitCode {
    levee_proxy::cli::main()
}
