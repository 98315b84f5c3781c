// Uploads and downloads of files the way Socket.IO apps send them (a Buffer
// argument of an event), against server.js started with UPLOAD_DIR and
// MAX_UPLOAD_BYTES: the Socket.IO side of benches/uploads.sh.
//
//   node upload-bench.js --url http://127.0.0.1:PORT --pid SERVER_PID \
//        --clients 50 --size-mib 5 --rounds 2
//
// Prints one JSON line: uploads and downloads in MiB/s and files/s, and the
// server's RSS when idle and at its peak (sampled every 20 ms from /proc).

"use strict";
const crypto = require("node:crypto");
const fs = require("node:fs");
const { io } = require("socket.io-client");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const url = arg("url");
const pid = Number(arg("pid"));
const clients = Number(arg("clients", "50"));
const sizeMib = Number(arg("size-mib", "5"));
const rounds = Number(arg("rounds", "2"));
const secret = process.env.CHAT_JWT_SECRET;

function token(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

function rssKib(field) {
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(field));
    return Number(line.split(/\s+/)[1]);
  } catch {
    return 0;
  }
}

const call = (socket, event, data) =>
  new Promise((resolve, reject) =>
    socket.timeout(120000).emit(event, data, (err, reply) => {
      if (err) return reject(err);
      if (!reply || !reply.ok) return reject(new Error(JSON.stringify(reply && reply.error)));
      resolve(reply.data);
    }),
  );

async function main() {
  const size = sizeMib * 1024 * 1024;
  const payload = Buffer.alloc(size);
  for (let i = 0; i < size; i++) payload[i] = (i * 2654435761) >>> 11;
  const sockets = await Promise.all(
    Array.from({ length: clients }, (_, i) => {
      const socket = io(url, { transports: ["websocket"], auth: { token: token(`u${i}`) }, forceNew: true });
      return new Promise((resolve, reject) => {
        socket.once("ready", () => resolve(socket));
        socket.once("connect_error", reject);
      });
    }),
  );
  await new Promise((r) => setTimeout(r, 500));
  const idle = rssKib("VmRSS:");
  let peak = idle;
  const sampler = setInterval(() => (peak = Math.max(peak, rssKib("VmRSS:"))), 20);
  let ids = [];
  let started = process.hrtime.bigint();
  for (let r = 0; r < rounds; r++) {
    ids = await Promise.all(sockets.map((s) => call(s, "file:upload", { name: "bench.bin", data: payload }).then((d) => d.id)));
  }
  const uploadS = Number(process.hrtime.bigint() - started) / 1e9;
  started = process.hrtime.bigint();
  const sizes = await Promise.all(sockets.map((s, i) => call(s, "file:download", { id: ids[i] }).then((d) => d.bytes.length)));
  const downloadS = Number(process.hrtime.bigint() - started) / 1e9;
  clearInterval(sampler);
  if (sizes.some((n) => n !== size)) throw new Error("a download was short");
  peak = Math.max(peak, rssKib("VmHWM:"));
  const uploaded = clients * rounds;
  console.log(
    JSON.stringify({
      size_mib: sizeMib,
      upload_mib_s: (uploaded * sizeMib) / uploadS,
      upload_files_s: uploaded / uploadS,
      download_mib_s: (clients * sizeMib) / downloadS,
      idle_rss_mib: idle / 1024,
      peak_rss_mib: peak / 1024,
    }),
  );
  sockets.forEach((s) => s.close());
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
