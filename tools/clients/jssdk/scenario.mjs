#!/usr/bin/env node
// Two matrix-js-sdk clients (the SDK Element Web is built on) against one homeserver, through
// what an Element-class web client leans on. Every step asserts what it expects and the run
// stops at the first step that fails.
//
//   node scenario.mjs --hs http://127.0.0.1:8008 --user-a a1 --pass-a pw-a \
//       --user-b b1 --pass-b pw-b [--timeout 30]
//
// The server must allow open registration (m.login.dummy) and serve the legacy
// unauthenticated media endpoints. Exit 0 = pass, 1 = a step failed, 2 = bad arguments.
// matrix-js-sdk is resolved from $JSSDK_WORK/node_modules (see run.sh), never from the repo.
//
// Steps are a list (`steps` below): a new check is one more entry.
import http from "http";
import { createRequire } from "module";
import { pathToFileURL } from "url";
import { isDeepStrictEqual } from "util";
import zlib from "zlib";

const require = createRequire((process.env.JSSDK_WORK || "/tmp/weft-jssdk/work") + "/");
// matrix-js-sdk 43 declares Node >= 22; on Node 20 this one builtin is missing.
if (!Promise.withResolvers) {
    Promise.withResolvers = function () {
        let resolve, reject;
        const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
        return { promise, resolve, reject };
    };
}
const load = (name) => import(pathToFileURL(require.resolve(name)).href);
const sdk = await load("matrix-js-sdk");
(await load("matrix-js-sdk/lib/logger.js")).logger.setLevel("error");
const {
    Method, ClientPrefix, ThreadFilterType, Direction, EventTimelineSet, NotificationCountType,
    PushRuleKind, PushRuleActionName, TweakName,
} = sdk;

function args() {
    const a = { timeout: 30 };
    const v = process.argv.slice(2);
    for (let i = 0; i < v.length; i += 2) a[v[i].replace(/^--/, "")] = v[i + 1];
    for (const k of ["hs", "user-a", "pass-a", "user-b", "pass-b"]) {
        if (!a[k]) { console.error(`missing --${k}`); process.exit(2); }
    }
    a.timeout = Number(a.timeout) * 1000;
    return a;
}
const A = args();
const log = (m) => process.stdout.write(`[jssdk ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
// The SDK logs every request and sync step to the console; only errors are kept.
for (const k of ["log", "info", "debug", "warn", "trace"]) console[k] = () => {};

class StepFailed extends Error {}
function check(cond, what) { if (!cond) throw new StepFailed(what); }
function eq(got, want, what) {
    if (!isDeepStrictEqual(got, want)) {
        throw new StepFailed(`${what}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
    }
}
async function waitFor(what, fn, ms = A.timeout) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new StepFailed(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 150));
    }
}
/// A Matrix error from a request that must fail, or a failure when it succeeds.
async function mustFail(what, fn) {
    try { await fn(); } catch (e) { return e; }
    throw new StepFailed(`${what} succeeded but must fail`);
}

// ---- a small PNG (no image library): a gradient, width x height, RGB
function crc32(buf) {
    let c, crc = 0xffffffff;
    for (let n = 0; n < buf.length; n++) {
        c = (crc ^ buf[n]) & 0xff;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crc = (crc >>> 8) ^ c;
    }
    return (crc ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
}
function png(w, h) {
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4);
    ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
    const raw = Buffer.alloc((w * 3 + 1) * h);
    for (let y = 0; y < h; y++) {
        raw[y * (w * 3 + 1)] = 0;
        for (let x = 0; x < w; x++) {
            const o = y * (w * 3 + 1) + 1 + x * 3;
            raw[o] = (x * 255 / w) | 0; raw[o + 1] = (y * 255 / h) | 0; raw[o + 2] = 128;
        }
    }
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(raw)), chunk("IEND", Buffer.alloc(0)),
    ]);
}
/// Width and height of a PNG or JPEG (what thumbnails come back as), or null.
function imageSize(b) {
    if (b.length > 24 && b.readUInt32BE(0) === 0x89504e47) return [b.readUInt32BE(16), b.readUInt32BE(20)];
    if (b.length > 4 && b[0] === 0xff && b[1] === 0xd8) {
        let i = 2;
        while (i + 9 < b.length) {
            if (b[i] !== 0xff) return null;
            const marker = b[i + 1], len = b.readUInt16BE(i + 2);
            if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
                return [b.readUInt16BE(i + 7), b.readUInt16BE(i + 5)];
            }
            i += 2 + len;
        }
    }
    return null;
}

// ---- a fake push gateway on loopback: keeps every request, answers 200 {"rejected": []}
async function startGateway() {
    const received = [];
    const server = http.createServer((req, res) => {
        const parts = [];
        req.on("data", (c) => parts.push(c));
        req.on("end", () => {
            let body = null;
            try { body = JSON.parse(Buffer.concat(parts).toString("utf8")); } catch { /* kept as null */ }
            received.push({ method: req.method, path: req.url, type: req.headers["content-type"] || "", body });
            res.writeHead(200, { "Content-Type": "application/json" });
            res.end(JSON.stringify({ rejected: [] }));
        });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${server.address().port}/_matrix/push/v1/notify`;
    return { url, received, close: () => server.close() };
}
/// The push a gateway received about an event, once it has.
const pushOf = (gw, eventId) => gw.received.find((r) => r.body?.notification?.event_id === eventId);

// ---- clients
const nonce = Math.random().toString(36).slice(2, 10);
const users = {};
async function register(name, localpart, password) {
    const reg = sdk.createClient({ baseUrl: A.hs });
    const res = await reg.registerRequest({
        username: localpart, password, auth: { type: "m.login.dummy" },
        initial_device_display_name: `jssdk ${name}`,
    });
    check(res.access_token && res.user_id, `registration of ${localpart} returned a token`);
    const client = sdk.createClient({
        baseUrl: A.hs, accessToken: res.access_token, userId: res.user_id, deviceId: res.device_id,
    });
    await client.startClient({ initialSyncLimit: 30, lazyLoadMembers: true });
    await waitFor(`${name}'s first sync`, () => client.isInitialSyncComplete());
    users[name] = { client, userId: res.user_id, localpart, password, token: res.access_token };
    log(`${name} is ${res.user_id}`);
}
const api = (who) => users[who].client;
async function raw(who, method, path, { query, body, prefix = ClientPrefix.V3 } = {}) {
    return api(who).http.authedRequest(method, path, query, body, { prefix });
}
async function fetchAs(who, url) {
    const headers = who ? { Authorization: `Bearer ${users[who].token}` } : {};
    const r = await fetch(url, { headers, redirect: "follow" });
    return { status: r.status, type: r.headers.get("content-type") || "", body: Buffer.from(await r.arrayBuffer()) };
}
function timelineEvent(who, roomId, eventId) {
    const room = api(who).getRoom(roomId);
    return room && room.findEventById(eventId);
}

const S = {}; // what the steps hand to each other
const [W, H] = [1000, 600];
const image = png(W, H);

const steps = [
    ["register two users and set display names", async () => {
        await register("alice", A["user-a"], A["pass-a"]);
        await register("bob", A["user-b"], A["pass-b"]);
        await api("alice").setDisplayName(`Alice ${nonce}`);
        await api("bob").setDisplayName(`Bobby Tables ${nonce}`);
        const p = await api("alice").getProfileInfo(users.bob.userId);
        eq(p.displayname, `Bobby Tables ${nonce}`, "bob's display name as alice reads it");
    }],
    ["alice creates a room, bob joins it", async () => {
        const { room_id } = await api("alice").createRoom({ name: `js ${nonce}`, preset: "private_chat" });
        S.room = room_id;
        await api("alice").invite(room_id, users.bob.userId);
        await waitFor("bob's invite", () => api("bob").getRoom(room_id)?.getMyMembership() === "invite");
        await api("bob").joinRoom(room_id);
        await waitFor("bob joined, as alice sees it",
            () => api("alice").getRoom(room_id)?.getMember(users.bob.userId)?.membership === "join");
    }],
    ["media: upload, authenticated and legacy download", async () => {
        const up = await api("alice").uploadContent(image, { name: "gradient.png", type: "image/png" });
        check(up.content_uri?.startsWith("mxc://"), `upload returned an mxc URI (${up.content_uri})`);
        S.mxc = up.content_uri;
        const authed = api("bob").mxcUrlToHttp(S.mxc, undefined, undefined, undefined, false, true, true);
        check(authed.includes("/_matrix/client/v1/media/download/"), `authenticated URL (${authed})`);
        const got = await fetchAs("bob", authed);
        eq(got.status, 200, "authenticated download status");
        check(got.body.equals(image), "authenticated download returns the uploaded bytes");
        check(got.type.startsWith("image/png"), `content type ${got.type}`);
        const anon = await fetchAs(null, authed);
        eq(anon.status, 401, "authenticated download without a token");
        const legacy = api("bob").mxcUrlToHttp(S.mxc, undefined, undefined, undefined, false, true, false);
        check(legacy.includes("/_matrix/media/v3/download/"), `legacy URL (${legacy})`);
        const old = await fetchAs(null, legacy);
        eq(old.status, 200, "legacy download status");
        check(old.body.equals(image), "legacy download returns the uploaded bytes");
        const [, serverName, mediaId] = S.mxc.match(/^mxc:\/\/([^/]+)\/(.+)$/);
        const missing = await fetchAs("bob", `${A.hs}/_matrix/client/v1/media/download/${serverName}/${mediaId}x`);
        eq(missing.status, 404, "unknown media");
    }],
    ["media: thumbnails, scaled and cropped", async () => {
        for (const [method, useAuth] of [["scale", true], ["crop", true], ["scale", false]]) {
            const url = api("bob").mxcUrlToHttp(S.mxc, 32, 32, method, false, true, useAuth);
            const t = await fetchAs(useAuth ? "bob" : null, url);
            eq(t.status, 200, `${method} thumbnail (${useAuth ? "authenticated" : "legacy"}) status`);
            const size = imageSize(t.body);
            check(size, `${method} thumbnail is a PNG or JPEG (${t.type})`);
            check(size[0] < W && size[1] < H, `${method} thumbnail is smaller than the original (${size})`);
            if (method === "crop") check(size[0] === size[1], `crop thumbnail is square (${size})`);
        }
    }],
    ["an m.image event reaches bob", async () => {
        const r = await api("alice").sendEvent(S.room, "m.room.message", {
            msgtype: "m.image", body: "gradient.png", url: S.mxc,
            info: { mimetype: "image/png", w: W, h: H, size: image.length },
        });
        const ev = await waitFor("the image in bob's timeline", () => timelineEvent("bob", S.room, r.event_id));
        eq(ev.getContent().url, S.mxc, "the image's url as bob received it");
        eq(ev.getContent().msgtype, "m.image", "msgtype");
    }],
    ["a message, its edit, a reaction and a thread reply", async () => {
        const m = await api("alice").sendMessage(S.room, { msgtype: "m.text", body: `the quick brown fox w${nonce}` });
        S.msg = m.event_id;
        const e = await api("alice").sendEvent(S.room, "m.room.message", {
            msgtype: "m.text", body: `* the quick red fox w${nonce}`,
            "m.new_content": { msgtype: "m.text", body: `the quick red fox w${nonce}` },
            "m.relates_to": { rel_type: "m.replace", event_id: S.msg },
        });
        S.edit = e.event_id;
        await waitFor("the message in bob's timeline", () => timelineEvent("bob", S.room, S.msg));
        const r = await api("bob").sendEvent(S.room, "m.reaction", {
            "m.relates_to": { rel_type: "m.annotation", event_id: S.msg, key: "👍" },
        });
        S.reaction = r.event_id;
        const t = await api("bob").sendMessage(S.room, S.msg, { msgtype: "m.text", body: `in a thread t${nonce}` });
        S.reply = t.event_id;
        const seen = await waitFor("the thread reply at alice",
            () => timelineEvent("alice", S.room, S.reply) || api("alice").getRoom(S.room)?.getThread(S.msg)?.findEventById(S.reply));
        eq(seen.threadRootId, S.msg, "the reply's thread root as alice's SDK sees it");
        const edited = await waitFor("the edit applied at bob",
            () => timelineEvent("bob", S.room, S.msg)?.replacingEventId() === S.edit && timelineEvent("bob", S.room, S.msg));
        eq(edited.getContent().body, `the quick red fox w${nonce}`, "the edited body as bob's SDK shows it");
    }],
    ["/relations", async () => {
        const ann = await api("alice").fetchRelations(S.room, S.msg, "m.annotation", "m.reaction");
        eq(ann.chunk.map((e) => e.event_id), [S.reaction], "annotations of the message");
        const thr = await api("alice").fetchRelations(S.room, S.msg, "m.thread", "m.room.message");
        eq(thr.chunk.map((e) => e.event_id), [S.reply], "thread relations of the message");
        const all = await api("bob").fetchRelations(S.room, S.msg, null, null, { recurse: true });
        const ids = all.chunk.map((e) => e.event_id).sort();
        eq(ids, [S.edit, S.reaction, S.reply].sort(), "every relation, recursively");
        const page = await api("bob").fetchRelations(S.room, S.msg, null, null, { limit: 1 });
        eq(page.chunk.length, 1, "a page of one");
        check(page.next_batch, "a next_batch when more relations remain");
    }],
    ["/threads", async () => {
        const all = await api("alice").createThreadListMessagesRequest(S.room, null, 10, Direction.Backward, ThreadFilterType.All);
        eq(all.chunk.map((e) => e.event_id), [S.msg], "the room's threads");
        const mine = await api("bob").createThreadListMessagesRequest(S.room, null, 10, Direction.Backward, ThreadFilterType.My);
        eq(mine.chunk.map((e) => e.event_id), [S.msg], "threads bob participated in");
    }],
    ["bundled aggregations", async () => {
        const ev = await api("alice").fetchRoomEvent(S.room, S.msg);
        const rel = ev.unsigned?.["m.relations"] || {};
        eq(rel["m.replace"]?.event_id, S.edit, "m.replace: the latest edit");
        eq(rel["m.thread"]?.count, 1, "m.thread: the reply count");
        eq(rel["m.thread"]?.latest_event?.event_id, S.reply, "m.thread: the latest reply");
        eq(rel["m.thread"]?.current_user_participated, true, "m.thread: alice sent the root");
        const asBob = await api("bob").fetchRoomEvent(S.room, S.msg);
        eq(asBob.unsigned?.["m.relations"]?.["m.thread"]?.current_user_participated, true, "m.thread: bob replied");
    }],
    ["tags", async () => {
        await api("alice").setRoomTag(S.room, "u.work", { order: 0.25 });
        const t = await api("alice").getRoomTags(S.room);
        eq(t.tags["u.work"], { order: 0.25 }, "the tag read back");
        await waitFor("the tag in alice's sync", () => api("alice").getRoom(S.room)?.tags?.["u.work"]);
        const other = await api("bob").getRoomTags(S.room);
        eq(other.tags, {}, "bob's tags are his own");
        await api("alice").deleteRoomTag(S.room, "u.work");
        eq((await api("alice").getRoomTags(S.room)).tags, {}, "tags after the delete");
    }],
    ["/search", async () => {
        // A room bob is not in: its words must never reach his results.
        const { room_id: secret } = await api("alice").createRoom({ name: `secret ${nonce}`, preset: "private_chat" });
        const s = await api("alice").sendMessage(secret, { msgtype: "m.text", body: `only alice may read q${nonce}` });
        const body = (term, extra = {}) => ({
            search_categories: { room_events: { search_term: term, ...extra } },
        });
        const r = await api("bob").search({ body: body(`brown w${nonce}`) });
        const re = r.search_categories.room_events;
        eq(re.results.map((x) => x.result.event_id), [S.msg], "bob's search for the original words");
        eq(re.count, 1, "count");
        check(re.highlights.includes(`w${nonce}`) || re.highlights.includes(`w${nonce}`.toLowerCase()),
            `highlights name the term (${JSON.stringify(re.highlights)})`);
        const edits = await api("alice").search({ body: body(`red w${nonce}`, { order_by: "recent" }) });
        check(edits.search_categories.room_events.results.some((x) => x.result.event_id === S.edit),
            "the edit's words are found");
        const mine = await api("alice").search({ body: body(`q${nonce}`) });
        eq(mine.search_categories.room_events.results.map((x) => x.result.event_id), [s.event_id], "alice finds her secret");
        const none = await api("bob").search({ body: body(`q${nonce}`) });
        eq(none.search_categories.room_events.results, [], "bob finds nothing from a room he never joined");
        eq(none.search_categories.room_events.count, 0, "and counts none");
        const ctx = await api("bob").search({ body: body(`w${nonce}`, {
            order_by: "recent", filter: { rooms: [S.room], limit: 1 },
            event_context: { before_limit: 1, after_limit: 1, include_profile: true },
        }) });
        const cr = ctx.search_categories.room_events;
        eq(cr.results.length, 1, "a page of one");
        check(cr.next_batch, "next_batch when more results remain");
        check(Array.isArray(cr.results[0].context?.events_before), "event_context: events_before");
        const next = await api("bob").search({ body: body(`w${nonce}`, {
            order_by: "recent", filter: { rooms: [S.room], limit: 1 },
        }), next_batch: cr.next_batch });
        const second = next.search_categories.room_events.results.map((x) => x.result.event_id);
        eq(second.length, 1, "the second page");
        check(second[0] !== cr.results[0].result.event_id, "the second page moves on");
        // The SDK's own search helper (Element's search box).
        const hi = await api("bob").searchRoomEvents({ term: `fox w${nonce}` });
        check(hi.results.some((x) => x.context.getEvent().getId() === S.msg), "searchRoomEvents finds the message");
        const bad = await mustFail("a search with an unknown category", () =>
            api("bob").search({ body: { search_categories: { nonsense: {} } } }));
        check(bad.httpStatus === 400, `unknown category: ${bad.httpStatus} ${bad.errcode}`);
    }],
    ["user directory", async () => {
        const byName = await api("alice").searchUserDirectory({ term: `bobby tables ${nonce}` });
        const hit = byName.results.find((u) => u.user_id === users.bob.userId);
        check(hit, `bob found by display name (${JSON.stringify(byName.results)})`);
        eq(hit.display_name, `Bobby Tables ${nonce}`, "display_name");
        const byId = await api("bob").searchUserDirectory({ term: users.alice.localpart });
        check(byId.results.some((u) => u.user_id === users.alice.userId), "alice found by user ID");
        await api("bob").setDisplayName(`Robert ${nonce}`);
        const renamed = await waitFor("the directory to follow bob's new name", async () => {
            const r = await api("alice").searchUserDirectory({ term: `robert ${nonce}` });
            return r.results.find((u) => u.user_id === users.bob.userId);
        });
        eq(renamed.display_name, `Robert ${nonce}`, "the new display name");
        const limited = await api("alice").searchUserDirectory({ term: nonce, limit: 1 });
        eq(limited.results.length, 1, "limit 1");
        eq(limited.limited, true, "limited when more users match");
    }],
    ["key backup round trip", async () => {
        const algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
        const { version } = await raw("alice", Method.Post, "/room_keys/version", {
            body: { algorithm, auth_data: { public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo" } },
        });
        check(version, "a backup version");
        const session = {
            first_message_index: 1, forwarded_count: 0, is_verified: true,
            session_data: { ephemeral: "eph", ciphertext: `ct-${nonce}`, mac: "mac" },
        };
        const sid = `session-${nonce}`;
        const put = await raw("alice", Method.Put, `/room_keys/keys/${encodeURIComponent(S.room)}/${sid}`,
            { query: { version }, body: session });
        eq(put.count, 1, "count after the upload");
        const back = await raw("alice", Method.Get, `/room_keys/keys/${encodeURIComponent(S.room)}/${sid}`, { query: { version } });
        eq(back.session_data, session.session_data, "the session read back");
        const all = await raw("alice", Method.Get, "/room_keys/keys", { query: { version } });
        eq(Object.keys(all.rooms[S.room].sessions), [sid], "every key");
        const info = await raw("alice", Method.Get, "/room_keys/version");
        eq([info.version, info.count], [version, 1], "the current version and its count");
        check(info.etag, "an etag");
        const bobs = await mustFail("bob reading alice's backup", () => raw("bob", Method.Get, "/room_keys/version"));
        eq(bobs.errcode, "M_NOT_FOUND", "bob has no backup");
        await raw("alice", Method.Delete, `/room_keys/version/${version}`);
        const gone = await mustFail("the deleted version", () => raw("alice", Method.Get, "/room_keys/version"));
        eq(gone.errcode, "M_NOT_FOUND", "no backup after the delete");
    }],
    ["push: a pusher and a keyword rule", async () => {
        S.gw = await startGateway();
        S.pusher = {
            app_id: "org.example.weft.jssdk", pushkey: `pk-${nonce}`, kind: "http",
            app_display_name: "weft js-sdk scenario", device_display_name: "bob's node",
            lang: "en", data: { url: S.gw.url }, append: false,
        };
        await api("bob").setPusher(S.pusher);
        const { pushers } = await api("bob").getPushers();
        eq(pushers.map((p) => [p.app_id, p.pushkey, p.kind, p.data?.url]),
            [[S.pusher.app_id, S.pusher.pushkey, "http", S.gw.url]], "bob's pushers");
        eq((await api("alice").getPushers()).pushers, [], "alice has no pushers");
        const badUrl = await mustFail("a pusher whose URL is not a push gateway's", () =>
            api("bob").setPusher({ ...S.pusher, pushkey: `bad-${nonce}`, data: { url: `${A.hs}/elsewhere` } }));
        eq([badUrl.httpStatus, badUrl.errcode], [400, "M_INVALID_PARAM"], "a gateway URL with the wrong path");
        S.rule = `kw-${nonce}`;
        S.word = `kw${nonce}`;
        await api("bob").addPushRule("global", PushRuleKind.ContentSpecific, S.rule, {
            pattern: S.word,
            actions: [PushRuleActionName.Notify, { set_tweak: TweakName.Highlight },
                { set_tweak: TweakName.Sound, value: "default" }],
        });
        const mine = (await api("bob").getPushRules()).global.content.find((r) => r.rule_id === S.rule);
        check(mine, "the keyword rule is among bob's content rules");
        eq([mine.pattern, mine.enabled, mine.default], [S.word, true, false], "the rule as stored");
        // The SDK's own copy follows m.push_rules in /sync (Element's settings read it).
        await waitFor("the rule in the SDK's push rules",
            () => api("bob").pushRules?.global?.content?.some((r) => r.rule_id === S.rule));
        const noPattern = await mustFail("a content rule without a pattern", () =>
            api("bob").addPushRule("global", PushRuleKind.ContentSpecific, `nopattern-${nonce}`,
                { actions: [PushRuleActionName.Notify] }));
        eq([noPattern.httpStatus, noPattern.errcode], [400, "M_BAD_JSON"], "a content rule without a pattern");
        const serverDefault = await mustFail("replacing a server-default rule", () =>
            api("bob").addPushRule("global", PushRuleKind.Override, ".m.rule.master",
                { actions: [PushRuleActionName.Notify], conditions: [] }));
        eq([serverDefault.httpStatus, serverDefault.errcode], [400, "M_INVALID_PARAM"], "a server-default rule ID");
    }],
    ["push: a keyword raises bob's highlight count", async () => {
        const room = api("bob").getRoom(S.room);
        const count = (t) => room.getUnreadNotificationCount(t);
        // Read everything so far: both counts start at 0.
        const last = room.getLiveTimeline().getEvents().filter((e) => !e.status).at(-1);
        await api("bob").sendReadReceipt(last);
        await waitFor("bob's counts at 0 after reading everything",
            () => count(NotificationCountType.Total) === 0 && count(NotificationCountType.Highlight) === 0);
        const m = await api("alice").sendMessage(S.room, { msgtype: "m.text", body: `ping ${S.word} please` });
        S.kw = m.event_id;
        await waitFor("bob's highlight count at 1", () => count(NotificationCountType.Highlight) === 1);
        eq(count(NotificationCountType.Total), 1, "bob's notification count");
        const ev = await waitFor("the keyword message at bob", () => timelineEvent("bob", S.room, S.kw));
        // The SDK evaluates the same rules itself (Element's sounds and badges use it): it agrees.
        eq(api("bob").getPushActionsForEvent(ev, true)?.tweaks?.highlight, true, "the SDK's own evaluation");
        eq(api("alice").getRoom(S.room).getUnreadNotificationCount(NotificationCountType.Highlight), 0,
            "the sender's own highlight count");
    }],
    ["push: the gateway receives the keyword's push", async () => {
        const got = await waitFor("the push of the keyword message", () => pushOf(S.gw, S.kw));
        eq([got.method, got.path], ["POST", "/_matrix/push/v1/notify"], "the gateway request");
        check(got.type.startsWith("application/json"), `content type ${got.type}`);
        const n = got.body.notification;
        eq(n.room_id, S.room, "room_id");
        eq([n.type, n.sender, n.content?.body], ["m.room.message", users.alice.userId, `ping ${S.word} please`],
            "type, sender and content");
        eq(n.sender_display_name, `Alice ${nonce}`, "sender_display_name");
        eq(n.room_name, `js ${nonce}`, "room_name");
        eq(n.prio, "high", "prio of a highlight");
        eq(n.counts, { unread: 1 }, "counts (bob has one room with unread notifications)");
        eq(n.devices.length, 1, "one device");
        const d = n.devices[0];
        eq([d.app_id, d.pushkey], [S.pusher.app_id, S.pusher.pushkey], "the device's app_id and pushkey");
        eq(d.data, {}, "the pusher's data without its url");
        eq(d.tweaks, { highlight: true, sound: "default" }, "the rule's tweaks");
        check(Number.isInteger(d.pushkey_ts) && d.pushkey_ts > 0, `pushkey_ts (${d.pushkey_ts})`);
    }],
    ["push: /notifications", async () => {
        const all = await raw("bob", Method.Get, "/notifications", { query: { limit: "50" } });
        const n = all.notifications.find((x) => x.event.event_id === S.kw);
        check(n, "the keyword message is among bob's notifications");
        eq([n.room_id, n.read], [S.room, false], "room_id and read");
        check(n.actions.includes("notify") && n.actions.some((a) => a.set_tweak === "highlight" && a.value !== false),
            `notify and highlight actions (${JSON.stringify(n.actions)})`);
        check(Number.isInteger(n.ts) && n.ts > 0, "ts");
        eq(all.notifications[0].event.event_id, S.kw, "newest first");
        const hi = await raw("bob", Method.Get, "/notifications", { query: { only: "highlight" } });
        eq(hi.notifications.map((x) => x.event.event_id), [S.kw], "only=highlight");
        const first = await raw("bob", Method.Get, "/notifications", { query: { limit: "1" } });
        eq(first.notifications.length, 1, "a page of one");
        check(first.next_token, "next_token when more remain");
        const next = await raw("bob", Method.Get, "/notifications", { query: { limit: "1", from: first.next_token } });
        eq(next.notifications.length, 1, "the next page");
        check(next.notifications[0].event.event_id !== first.notifications[0].event.event_id, "the next page moves on");
        const bad = await mustFail("only=nonsense", () =>
            raw("bob", Method.Get, "/notifications", { query: { only: "nonsense" } }));
        eq([bad.httpStatus, bad.errcode], [400, "M_INVALID_PARAM"], "an unknown 'only'");
        // Element's notification panel: the SDK's notification timeline, paginated from /notifications.
        const set = new EventTimelineSet(undefined, { timelineSupport: true }, api("bob"));
        api("bob").setNotifTimelineSet(set);
        await api("bob").paginateEventTimeline(set.getLiveTimeline(), { backwards: true, limit: 10 });
        eq(set.getLiveTimeline().getEvents().map((e) => e.getId()), [S.kw], "the SDK's notification timeline");
    }],
    ["push: a read receipt clears the counts", async () => {
        const room = api("bob").getRoom(S.room);
        const count = (t) => room.getUnreadNotificationCount(t);
        await api("bob").sendReadReceipt(timelineEvent("bob", S.room, S.kw));
        await waitFor("bob's counts back at 0",
            () => count(NotificationCountType.Highlight) === 0 && count(NotificationCountType.Total) === 0);
        // What the server says on a fresh /sync (no local echo of the SDK's in it).
        const filter = JSON.stringify({ room: { rooms: [S.room], timeline: { limit: 1 } } });
        const s = await raw("bob", Method.Get, "/sync", { query: { filter } });
        eq(s.rooms.join[S.room].unread_notifications, { notification_count: 0, highlight_count: 0 },
            "unread_notifications in a fresh /sync");
        const after = await raw("bob", Method.Get, "/notifications", { query: { only: "highlight" } });
        eq(after.notifications.map((x) => [x.event.event_id, x.read]), [[S.kw, true]], "read after the receipt");
    }],
    ["push: a disabled rule, a deleted rule, a removed pusher", async () => {
        const room = api("bob").getRoom(S.room);
        const count = (t) => room.getUnreadNotificationCount(t);
        await api("bob").setPushRuleEnabled("global", PushRuleKind.ContentSpecific, S.rule, false);
        await waitFor("the rule disabled in the SDK's push rules",
            () => api("bob").pushRules?.global?.content?.find((r) => r.rule_id === S.rule)?.enabled === false);
        const m = await api("alice").sendMessage(S.room, { msgtype: "m.text", body: `again ${S.word}` });
        // Still a notification (the one-to-one default rule), no longer a highlight.
        await waitFor("bob's notification count at 1", () => count(NotificationCountType.Total) === 1);
        eq(count(NotificationCountType.Highlight), 0, "no highlight from a disabled rule");
        const got = await waitFor("the push of the second message", () => pushOf(S.gw, m.event_id));
        eq(got.body.notification.devices[0].tweaks, { sound: "default" }, "the one-to-one rule's tweaks");
        eq(got.body.notification.counts, { unread: 1 }, "counts");
        await api("bob").deletePushRule("global", PushRuleKind.ContentSpecific, S.rule);
        const rules = await api("bob").getPushRules();
        check(!rules.global.content.some((r) => r.rule_id === S.rule), "the rule is gone");
        const gone = await mustFail("deleting it again", () =>
            api("bob").deletePushRule("global", PushRuleKind.ContentSpecific, S.rule));
        eq([gone.httpStatus, gone.errcode], [404, "M_NOT_FOUND"], "an unknown rule");
        await api("bob").setPusher({ app_id: S.pusher.app_id, pushkey: S.pusher.pushkey, kind: null });
        eq((await api("bob").getPushers()).pushers, [], "bob's pushers after the removal");
        S.gw.close();
    }],
    ["deactivation", async () => {
        const bob = users.bob;
        const first = await mustFail("deactivate without auth", () => api("bob").deactivateAccount());
        eq(first.httpStatus, 401, "user-interactive auth first");
        const session = first.data?.session;
        api("bob").stopClient(); // its long-poll would only fail once the token is gone
        await api("bob").deactivateAccount({
            type: "m.login.password", identifier: { type: "m.id.user", user: bob.localpart },
            password: bob.password, session,
        });
        await waitFor("bob's leave at alice",
            () => api("alice").getRoom(S.room)?.getMember(bob.userId)?.membership === "leave");
        const again = await mustFail("a login as the deactivated bob", () =>
            sdk.createClient({ baseUrl: A.hs }).loginWithPassword(bob.localpart, bob.password));
        eq(again.httpStatus, 403, `login refused (${again.errcode})`);
        const old = await mustFail("the old token", () => api("bob").whoami());
        eq(old.httpStatus, 401, "the old token is gone");
        const gone = await api("alice").searchUserDirectory({ term: `robert ${nonce}` });
        eq(gone.results.filter((u) => u.user_id === bob.userId), [], "bob left the directory");
    }],
];

async function main() {
    let failed = false;
    for (const [name, fn] of steps) {
        const t0 = Date.now();
        try {
            await fn();
            log(`ok   ${name} (${Date.now() - t0} ms)`);
        } catch (e) {
            log(`FAIL ${name}: ${e instanceof StepFailed ? e.message : (e.stack || e)}`);
            if (e.httpStatus) log(`     HTTP ${e.httpStatus} ${e.errcode || ""} ${e.data ? JSON.stringify(e.data) : ""}`);
            failed = true;
            break;
        }
    }
    for (const u of Object.values(users)) u.client.stopClient();
    log(failed ? "FAIL" : "PASS");
    process.exit(failed ? 1 : 0);
}
main().catch((e) => { console.error(e); process.exit(1); });
