//! Standard output for the CLI's reports. `print!` panics when the reader has gone (a pipe
//! into `head`, a closed terminal); a report nobody reads any more is simply not written.

use std::io::Write;

/// Writes `text` to standard output. A reader that has gone away (broken pipe) ends the
/// output quietly; any other failure is reported on standard error once.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: writing to standard output: {err}");
        }
        _ => {}
    }
}

/// [`print`] with a newline.
pub fn println(text: &str) {
    print(&format!("{text}\n"));
}
