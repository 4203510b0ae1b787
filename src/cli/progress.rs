//! Progress of a long operator command on a terminal: items done, rate, time left. Nothing
//! when standard error is not a terminal or the output is for a program (`--json`), so
//! scripts and logs never see the bar's redraws.

use std::io::IsTerminal as _;

/// A bar counting `what` up to `total` (a spinner when the total is unknown), or `None` when
/// `quiet` or standard error is not a terminal.
pub fn bar(total: Option<u64>, what: &str, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = format!(
        "{{spinner}} {what} {{human_pos}}/{{human_len}}, {{per_sec}}, {{eta}} left {{wide_bar}}"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    Some(bar)
}
