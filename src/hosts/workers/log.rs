//! Workers side of structured logging: the line goes to the console at its level.

fn emit(level: &str, event: &str, fields: &[(&str, &str)]) {
    let text = crate::log::line(level, event, fields);
    match level {
        "error" => worker::console_error!("{text}"),
        "warn" => worker::console_warn!("{text}"),
        _ => worker::console_log!("{text}"),
    }
}

/// A line at the level the core's ports name.
pub fn at(level: crate::ports::Level, event: &str, fields: &[(&str, &str)]) {
    emit(level.as_str(), event, fields)
}

/// The console as the core's `Log` port (the Batcher's delivery engine).
pub struct Console;

impl crate::ports::Log for Console {
    fn emit(&self, level: crate::ports::Level, event: &str, fields: &[(&str, &str)]) {
        at(level, event, fields)
    }
}

pub fn error(event: &str, fields: &[(&str, &str)]) {
    emit("error", event, fields)
}
