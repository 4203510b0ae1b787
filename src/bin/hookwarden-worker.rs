//! `hookwarden-worker`: placeholder until the worker lands; exits 1 so nothing mistakes it
//! for a running consumer.

fn main() -> std::process::ExitCode {
    eprintln!("{}", hookwarden::worker::NOT_YET);
    std::process::ExitCode::from(1)
}
