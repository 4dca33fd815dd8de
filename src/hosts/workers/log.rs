//! Workers side of structured logging: the line goes to the console at its level.

fn emit(level: &str, event: &str, request_id: &str, fields: &[(&str, &str)]) {
    let text = crate::log::line(level, event, request_id, fields);
    match level {
        "error" => worker::console_error!("{text}"),
        "warn" => worker::console_warn!("{text}"),
        _ => worker::console_log!("{text}"),
    }
}

/// A line at the level the core's ports name.
pub fn at(level: crate::ports::Level, event: &str, request_id: &str, fields: &[(&str, &str)]) {
    emit(level.as_str(), event, request_id, fields)
}

pub fn error(event: &str, request_id: &str, fields: &[(&str, &str)]) {
    emit("error", event, request_id, fields)
}
