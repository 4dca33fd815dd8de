//! Structured JSON log lines (one object per line), which Workers Logs and `wrangler tail`
//! index by field. Never pass secrets here.

fn emit(level: &str, event: &str, request_id: &str, fields: &[(&str, &str)]) {
    let mut line = serde_json::Map::new();
    line.insert("level".into(), level.into());
    line.insert("event".into(), event.into());
    if !request_id.is_empty() {
        line.insert("request_id".into(), request_id.into());
    }
    for (k, v) in fields {
        line.insert((*k).into(), (*v).into());
    }
    let text = serde_json::Value::Object(line).to_string();
    match level {
        "error" => worker::console_error!("{text}"),
        "warn" => worker::console_warn!("{text}"),
        _ => worker::console_log!("{text}"),
    }
}

pub fn info(event: &str, request_id: &str, fields: &[(&str, &str)]) {
    emit("info", event, request_id, fields)
}
pub fn warn(event: &str, request_id: &str, fields: &[(&str, &str)]) {
    emit("warn", event, request_id, fields)
}
pub fn error(event: &str, request_id: &str, fields: &[(&str, &str)]) {
    emit("error", event, request_id, fields)
}
