//! The manager's CSS: label colours (from [`bulkhead_domain::Label::color_hex`], the one
//! table), state badges, validation and error styles. The colours of states, validation
//! messages, error bars and policy error lines differ from every label colour, so a
//! screenshot test can tell them apart.

use std::fmt::Write as _;

use bulkhead_domain::Label;

/// Badge colour of a domain state (`0xRRGGBB`).
pub fn state_rgb(state: &str) -> u32 {
    match state {
        "running" => 0x2e8b57,
        "starting" => 0x1c71d8,
        "paused" => 0xb5835a,
        "stopping" | "dying" => 0x813d9c,
        "broken" => 0xe01b24,
        // halted and anything unknown
        _ => 0x9a9996,
    }
}

/// Every state with its own badge colour.
pub const STATES: [&str; 7] = [
    "halted", "starting", "running", "paused", "stopping", "dying", "broken",
];

/// Background of a validation message under a form field.
pub const VALIDATION_RGB: u32 = 0xf8c8c8;
/// Background of the error bar at the bottom of a window.
pub const ERROR_BAR_RGB: u32 = 0xffe3b0;
/// Background of a policy line with an error in the editor.
pub const POLICY_ERROR_LINE_RGB: u32 = 0xffb3b3;

/// CSS class of the swatch for `label` (e.g. `label-red`).
pub fn label_class(label: &str) -> String {
    format!("label-{label}")
}

/// CSS class of the badge for `state` (e.g. `state-running`).
pub fn state_class(state: &str) -> String {
    if STATES.contains(&state) {
        format!("state-{state}")
    } else {
        "state-halted".into()
    }
}

/// The stylesheet.
pub fn css() -> String {
    let mut s = String::new();
    for l in Label::ALL {
        let _ = writeln!(
            s,
            ".{} {{ background: #{}; min-width: 24px; min-height: 24px; }}",
            label_class(l.as_str()),
            l.color_hex()
        );
    }
    for st in STATES {
        let _ = writeln!(
            s,
            ".{} {{ background: #{:06x}; min-width: 14px; min-height: 14px; }}",
            state_class(st),
            state_rgb(st)
        );
    }
    let _ = writeln!(
        s,
        ".validation-error {{ background: #{VALIDATION_RGB:06x}; color: #5c0000; padding: 4px; }}"
    );
    let _ = writeln!(
        s,
        ".error-bar {{ background: #{ERROR_BAR_RGB:06x}; color: #3d2100; padding: 6px; }}"
    );
    s.push_str(".domain-name { font-weight: bold; }\n");
    s
}

/// Install the stylesheet on the default display (once per process).
pub fn install() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(display) = relm4::gtk::gdk::Display::default() else {
            tracing::warn!("no display: styles not installed");
            return;
        };
        let provider = relm4::gtk::CssProvider::new();
        provider.load_from_data(&css());
        relm4::gtk::style_context_add_provider_for_display(
            &display,
            &provider,
            relm4::gtk::STYLE_PROVIDER_PRIORITY_APPLICATION,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_marker_colours_differ_from_labels() {
        let mut marks: Vec<u32> = STATES.iter().map(|s| state_rgb(s)).collect();
        marks.extend([VALIDATION_RGB, ERROR_BAR_RGB, POLICY_ERROR_LINE_RGB]);
        for l in Label::ALL {
            assert!(!marks.contains(&l.color_rgb()), "{l:?}");
        }
        let mut sorted = marks.clone();
        sorted.sort();
        sorted.dedup();
        // stopping and dying share one colour
        assert_eq!(sorted.len(), marks.len() - 1);
        assert!(css().contains(".label-red { background: #cc0000;"));
    }
}
