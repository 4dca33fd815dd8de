// The JavaScript Worker a Workers user would write instead of edge-enrich: the same API
// (GET/POST /v1/readings, /healthz), validation, calibration, enrichment and problem documents,
// and the same delivery contract (readings stored in a SQLite Durable Object before the 200,
// flushed by alarm at max age or max items, retried with backoff, dead-lettered on 4xx).
// Used only by `cargo xtask bench` as the peer that edge-enrich is measured against.
import { DurableObject } from "cloudflare:workers";

const DEVICE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const UNITS = { c: "C", f: "F", k: "K" };

function problem(status, title, detail, errors) {
  const body = { type: `urn:edge-enrich:problem:${title.toLowerCase().replace(/ /g, "-")}`, title, status, detail };
  if (errors && errors.length) body.errors = errors;
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/problem+json" } });
}

function celsius(value, unit) {
  return unit === "F" ? ((value - 32) * 5) / 9 : unit === "K" ? value - 273.15 : value;
}

function roundHalfAway(x, decimals) {
  const scale = 10 ** decimals;
  const scaled = x * scale;
  const nudged = scaled + Math.sign(scaled) * Math.max(Math.abs(scaled), 1) * 1e-12;
  const r = (Math.sign(nudged) * Math.round(Math.abs(nudged))) / scale;
  return r === 0 ? 0 : r;
}

let profiles = null; // parsed once per isolate
function calibration(env) {
  if (profiles) return profiles;
  const list = env.CALIBRATION_PROFILES ? JSON.parse(env.CALIBRATION_PROFILES).profiles : [];
  const exact = new Map();
  const prefixes = [];
  for (const p of list) {
    if (p.match.endsWith("*")) prefixes.push([p.match.slice(0, -1), p]);
    else exact.set(p.match, p);
  }
  prefixes.sort((a, b) => b[0].length - a[0].length);
  profiles = { exact, prefixes };
  return profiles;
}

function lookup(env, id) {
  const { exact, prefixes } = calibration(env);
  return exact.get(id) ?? prefixes.find(([prefix]) => id.startsWith(prefix))?.[1] ?? null;
}

// Returns [reading, errors].
function validate(fields, index) {
  const errors = [];
  const err = (field, detail) => errors.push(index === undefined ? { field, detail } : { index, field, detail });
  const id = fields.device_id;
  if (typeof id !== "string" || !DEVICE_ID.test(id)) err("device_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -");
  let temp = fields.temp;
  if (typeof temp === "string") temp = DECIMAL.test(temp.trim()) ? Number(temp) : NaN;
  if (typeof temp !== "number" || !Number.isFinite(temp)) err("temp", "must be a finite decimal number");
  const unit = fields.unit === undefined ? "C" : UNITS[String(fields.unit).toLowerCase()];
  if (!unit) err("unit", "must be one of C, F, K");
  if (!errors.length && celsius(temp, unit) < -273.15 - 1e-9) err("temp", "is below absolute zero");
  return [{ device_id: id, temp, unit, ts: fields.ts, seq: fields.seq }, errors];
}

function enrich(env, r, edge, now) {
  const p = lookup(env, r.device_id);
  const [gain, offset, decimals] = p ? [p.gain ?? 1, p.offset ?? 0, p.decimals ?? 1] : [1, 0, 1];
  const out = {
    id: crypto.randomUUID(),
    device_id: r.device_id,
    temp_c: roundHalfAway(gain * celsius(r.temp, r.unit) + offset, decimals),
    raw: { value: r.temp, unit: r.unit },
    calibration: p ? { profile: p.match, version: p.version, gain, offset } : null,
    edge,
    received_at_ms: now,
  };
  if (r.ts !== undefined) out.ts = Number(r.ts);
  if (r.seq !== undefined) out.seq = Number(r.seq);
  return out;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/healthz") return Response.json({ status: "ok", platform: "cloudflare-workers-js" });
    if (url.pathname !== "/v1/readings") return problem(404, "Not found", "no such resource");
    let items;
    if (request.method === "GET") {
      const fields = {};
      for (const [k, v] of url.searchParams) {
        if (k in fields) return problem(400, "Invalid request", `${k} is repeated`);
        fields[k] = v;
      }
      items = [fields];
    } else if (request.method === "POST") {
      try {
        const body = await request.json();
        items = Array.isArray(body) ? body : [body];
      } catch {
        return problem(400, "Invalid request", "body is not valid JSON");
      }
    } else {
      return new Response(null, { status: 405, headers: { allow: "GET, POST" } });
    }
    const readings = [];
    const errors = [];
    items.forEach((f, i) => {
      const [r, e] = validate(f, request.method === "GET" ? undefined : i);
      errors.push(...e);
      readings.push(r);
    });
    if (errors.length) return problem(400, "Invalid request", "invalid readings", errors);
    const cf = request.cf ?? {};
    const edge = { node: env.EDGE_NODE || `cf-${(cf.colo ?? "local").toLowerCase()}`, colo: cf.colo ?? null, country: cf.country ?? null, region: cf.region ?? null, platform: "cloudflare-workers-js" };
    const now = Date.now();
    const enriched = readings.map((r) => enrich(env, r, edge, now));
    const stub = env.BATCHER.get(env.BATCHER.idFromName(`${cf.colo ?? "local"}:0`));
    const accepted = await stub.accept(enriched.map((e) => JSON.stringify(e)), edge.node);
    if (!accepted) return problem(503, "Delivery backlog full", "backlog full");
    const body = request.method === "GET" ? enriched[0] : enriched;
    return Response.json(body, { headers: { "cache-control": "no-store" } });
  },
};

export class Batcher extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, received_at_ms INTEGER, doc TEXT, batch_id TEXT)");
    this.failures = 0;
  }

  async accept(docs, node) {
    this.node = node;
    const pending = this.sql.exec("SELECT COUNT(*) AS n FROM pending").one().n;
    if (pending + docs.length > Number(this.env.MAX_BACKLOG ?? 10000)) return false;
    const now = Date.now();
    for (const doc of docs) this.sql.exec("INSERT INTO pending (received_at_ms, doc) VALUES (?, ?)", now, doc);
    const maxItems = Number(this.env.FLUSH_MAX_ITEMS ?? 50);
    const due = pending + docs.length >= maxItems ? now : now + Number(this.env.FLUSH_INTERVAL_MS ?? 200);
    const current = await this.ctx.storage.getAlarm();
    if (this.failures === 0 && (current === null || current > due)) await this.ctx.storage.setAlarm(due);
    return true;
  }

  async alarm() {
    const maxItems = Number(this.env.FLUSH_MAX_ITEMS ?? 50);
    for (;;) {
      let batchId = this.sql.exec("SELECT batch_id FROM pending WHERE batch_id IS NOT NULL LIMIT 1").toArray()[0]?.batch_id;
      if (!batchId) {
        const { n, oldest } = this.sql.exec("SELECT COUNT(*) AS n, MIN(received_at_ms) AS oldest FROM pending").one();
        if (n === 0) return;
        const due = n >= maxItems || oldest + Number(this.env.FLUSH_INTERVAL_MS ?? 200) <= Date.now();
        if (!due) return void (await this.ctx.storage.setAlarm(oldest + Number(this.env.FLUSH_INTERVAL_MS ?? 200)));
        batchId = crypto.randomUUID();
        this.sql.exec("UPDATE pending SET batch_id = ? WHERE seq IN (SELECT seq FROM pending WHERE batch_id IS NULL ORDER BY seq LIMIT ?)", batchId, maxItems);
      }
      const docs = this.sql.exec("SELECT doc FROM pending WHERE batch_id = ? ORDER BY seq", batchId).toArray().map((r) => r.doc);
      const body = `{"batch_id":${JSON.stringify(batchId)},"edge_node":${JSON.stringify(this.node ?? "local")},"sent_at_ms":${Date.now()},"readings":[${docs.join(",")}]}`;
      let status = 0;
      try {
        const res = await fetch(this.env.COLLECTOR_URL, { method: "POST", body, headers: { "content-type": "application/json", "idempotency-key": batchId } });
        status = res.status;
      } catch {
        status = 0;
      }
      if (status >= 200 && status < 300) {
        this.sql.exec("DELETE FROM pending WHERE batch_id = ?", batchId);
        this.failures = 0;
      } else if (status === 0 || status === 408 || status === 429 || status >= 500) {
        this.failures += 1;
        const step = Math.min(5000, 200 * 2 ** (this.failures - 1));
        return void (await this.ctx.storage.setAlarm(Date.now() + step / 2 + Math.random() * (step / 2)));
      } else {
        this.sql.exec("DELETE FROM pending WHERE batch_id = ?", batchId); // dead letter (dropped here)
        this.failures = 0;
      }
    }
  }
}
