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
    if (url.pathname === "/admin/stats") {
      // Shaped like edge-enrich's, so the bench reads both the same way.
      const cf = request.cf ?? {};
      const stub = env.BATCHER.get(env.BATCHER.idFromName(`${cf.colo ?? "local"}:0`));
      return Response.json({ batchers: [await stub.stats()] });
    }
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

// The same storage design as edge-enrich's batcher wherever it is not a matter of language: the
// object is the only writer of its storage, so the backlog size and the alarm time are kept in
// memory rather than read back (a COUNT(*) per accept grows with the backlog), rows go in with
// one multi-row INSERT, and an alarm sends up to SENDS_IN_FLIGHT batches at once.
const ROWS_PER_INSERT = 50; // 2 bound parameters per row, 100 per statement
const SENDS_IN_FLIGHT = 4;
// What Cloudflare bills the object for is counted as edge-enrich counts its own: every RPC call
// and alarm run, every setAlarm, and the rows each statement's cursor read and wrote.

export class Batcher extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.billed = { accept_calls: 0, alarm_runs: 0, alarms_set: 0, rows_read: 0, rows_written: 0 };
    this.acceptedReadings = 0;
    this.exec("CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, received_at_ms INTEGER, doc TEXT, batch_id TEXT)");
    this.exec("CREATE INDEX IF NOT EXISTS pending_batch ON pending (batch_id)");
    this.pending = this.exec("SELECT COUNT(*) AS n FROM pending")[0].n;
    this.alarmAt = undefined; // unknown until first read
    this.failures = 0;
    this.maxItems = Number(env.FLUSH_MAX_ITEMS ?? 50);
    this.maxAgeMs = Number(env.FLUSH_INTERVAL_MS ?? 200);
    this.maxBacklog = Number(env.MAX_BACKLOG ?? 10000);
  }

  // Runs a statement, returns its rows, and counts what it read and wrote.
  exec(query, ...binds) {
    const cursor = this.sql.exec(query, ...binds);
    const rows = cursor.toArray();
    this.billed.rows_read += cursor.rowsRead;
    this.billed.rows_written += cursor.rowsWritten;
    return rows;
  }

  stats() {
    const { accept_calls, alarm_runs, alarms_set, rows_read, rows_written } = this.billed;
    return {
      accepted_readings: this.acceptedReadings,
      pending: this.pending,
      billed: { requests: { accept_calls, alarm_runs, alarms_set }, storage: { rows_read, rows_written } },
    };
  }

  async setAlarm(at) {
    this.billed.alarms_set += 1;
    await this.ctx.storage.setAlarm(at);
    this.alarmAt = at;
  }

  async accept(docs, node) {
    this.billed.accept_calls += 1;
    this.node = node;
    if (this.pending + docs.length > this.maxBacklog) return false;
    const now = Date.now();
    for (let i = 0; i < docs.length; i += ROWS_PER_INSERT) {
      const chunk = docs.slice(i, i + ROWS_PER_INSERT);
      const binds = chunk.flatMap((doc) => [now, doc]);
      this.exec(`INSERT INTO pending (received_at_ms, doc) VALUES ${chunk.map(() => "(?, ?)").join(", ")}`, ...binds);
    }
    this.pending += docs.length;
    this.acceptedReadings += docs.length;
    if (this.alarmAt === undefined) this.alarmAt = await this.ctx.storage.getAlarm();
    const due = this.pending >= this.maxItems ? now : now + this.maxAgeMs;
    if (this.failures === 0 && (this.alarmAt === null || this.alarmAt > due)) await this.setAlarm(due);
    return true;
  }

  // The readings of the next batch: one formed earlier and not yet delivered, or a new one if
  // enough are waiting or the oldest is due. null: nothing due now (an alarm is set for later).
  async nextBatch() {
    const formed = this.exec("SELECT batch_id FROM pending WHERE batch_id IS NOT NULL AND batch_id NOT IN (SELECT value FROM json_each(?)) LIMIT 1", JSON.stringify([...this.sending]))[0];
    let batchId = formed?.batch_id;
    if (!batchId) {
      const oldest = this.exec("SELECT received_at_ms FROM pending WHERE batch_id IS NULL ORDER BY seq LIMIT 1")[0]?.received_at_ms;
      if (oldest === undefined) return null;
      const unassigned = this.pending - this.assigned;
      if (unassigned < this.maxItems && oldest + this.maxAgeMs > Date.now()) {
        if (this.sending.size === 0) await this.setAlarm(oldest + this.maxAgeMs);
        return null;
      }
      batchId = crypto.randomUUID();
      this.exec("UPDATE pending SET batch_id = ? WHERE seq IN (SELECT seq FROM pending WHERE batch_id IS NULL ORDER BY seq LIMIT ?)", batchId, this.maxItems);
    }
    const docs = this.exec("SELECT doc FROM pending WHERE batch_id = ? ORDER BY seq", batchId).map((r) => r.doc);
    this.sending.add(batchId);
    this.assigned += docs.length;
    return { batchId, docs };
  }

  async send({ batchId, docs }) {
    const body = `{"batch_id":${JSON.stringify(batchId)},"edge_node":${JSON.stringify(this.node ?? "local")},"sent_at_ms":${Date.now()},"readings":[${docs.join(",")}]}`;
    try {
      const res = await fetch(this.env.COLLECTOR_URL, { method: "POST", body, headers: { "content-type": "application/json", "idempotency-key": batchId } });
      return res.status;
    } catch {
      return 0;
    }
  }

  async alarm() {
    this.billed.alarm_runs += 1;
    this.alarmAt = null; // this alarm has fired
    this.sending = new Set();
    this.assigned = this.exec("SELECT COUNT(*) AS n FROM pending WHERE batch_id IS NOT NULL")[0].n;
    for (;;) {
      const batches = [];
      for (let b; batches.length < SENDS_IN_FLIGHT && (b = await this.nextBatch()); ) batches.push(b);
      if (!batches.length) return;
      const statuses = await Promise.all(batches.map((b) => this.send(b)));
      let retry = false;
      batches.forEach((b, i) => {
        const status = statuses[i];
        if (status === 0 || status === 408 || status === 429 || status >= 500) {
          retry = true;
          return;
        }
        // Delivered, or refused for good (dead letter, dropped here).
        this.exec("DELETE FROM pending WHERE batch_id = ?", b.batchId);
        this.pending -= b.docs.length;
        this.assigned -= b.docs.length;
      });
      this.sending.clear();
      if (retry) {
        this.failures += 1;
        const step = Math.min(5000, 200 * 2 ** (this.failures - 1));
        return void (await this.setAlarm(Date.now() + step / 2 + Math.random() * (step / 2)));
      }
      this.failures = 0;
    }
  }
}
