// Runs the real Better Auth on the kit's tables, step by step, as an app would; used by
// tests/test_better_auth.py. DATABASE_URL names a database migrated and seeded by the kit.
//
//   node check.mjs            every step; prints one JSON object with what was written
//   node check.mjs schema     only Better Auth's start-up schema check
//
// A failed step prints `step <name> failed: <why>` on stderr and exits 1.

import { createHmac } from "node:crypto";
import { auth, pool } from "./auth.mjs"; // the configuration the README shows, unchanged

const PASSWORD = "password123";
const ALICE_TOTP = "JBSWY3DPEHPK3PXP"; // the development seed's secret for alice (base32)

/** RFC 6238 TOTP (SHA-1, 6 digits, 30 s) written here, so Better Auth's own generator is not what checks it. */
function totp(base32Secret, at = Date.now()) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of base32Secret.replace(/=+$/, "").toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/** A browser: keeps the cookies Better Auth sets and sends them back. */
class Browser {
  cookies = new Map();
  headers() {
    return new Headers({ cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ") });
  }
  async call(endpoint, args = {}) {
    const response = await auth.api[endpoint]({ ...args, headers: this.headers(), asResponse: true });
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(";");
      const [name, value] = [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)];
      if (value === "" || attrs.some((a) => /max-age=0\b/i.test(a.trim()))) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    const text = await response.text();
    const body = text ? JSON.parse(text) : null;
    if (!response.ok) throw new Error(`${endpoint} answered ${response.status}: ${text}`);
    return body;
  }
}

const out = {};
async function step(name, run) {
  try {
    await run();
  } catch (error) {
    console.error(`step ${name} failed: ${error?.message ?? error}`);
    await pool.end();
    process.exit(1);
  }
}
function expect(condition, what) {
  if (!condition) throw new Error(what);
}

await step("schema", async () => {
  // Better Auth validates the schema before serving any call; a mismatch throws SchemaMismatchError here.
  const context = await auth.$context;
  expect(typeof context.checkSchema === "function", "Better Auth's schema validation is off");
  await context.checkSchema();
  await auth.api.getSession({ headers: new Headers() });
  out.schema = "ok";
});
if (process.argv[2] === "schema") {
  console.log(JSON.stringify(out));
  await pool.end();
  process.exit(0);
}

const dave = new Browser();
const erin = new Browser();
const frank = new Browser();
const alice = new Browser();

await step("sign up", async () => {
  const made = await dave.call("signUpEmail", { body: { email: "dave@example.com", password: PASSWORD, name: "Dave Ito" } });
  out.dave = made.user.id;
  await erin.call("signUpEmail", { body: { email: "erin@example.com", password: PASSWORD, name: "Erin Park" } });
  const made3 = await frank.call("signUpEmail", { body: { email: "frank@example.com", password: PASSWORD, name: "Frank Ng" } });
  out.frank = made3.user.id;
});

await step("sign in a new user", async () => {
  const fresh = new Browser();
  const signed = await fresh.call("signInEmail", { body: { email: "dave@example.com", password: PASSWORD } });
  expect(signed.user?.id === out.dave, `signed in as ${signed.user?.id}, not ${out.dave}`);
});

await step("get session", async () => {
  const session = await dave.call("getSession");
  expect(session?.user?.email === "dave@example.com", `getSession gave ${JSON.stringify(session)}`);
});

await step("sign in seeded bob", async () => {
  const bob = new Browser();
  const signed = await bob.call("signInEmail", { body: { email: "bob@example.com", password: PASSWORD } });
  expect(signed.user?.email === "bob@example.com", `bob got ${JSON.stringify(signed)}`);
  const session = await bob.call("getSession");
  expect(session?.user?.email === "bob@example.com", "bob has no session");
});

await step("accept a seeded invitation", async () => {
  const { rows } = await pool.query("SELECT id FROM invitations WHERE email = 'dave@example.com' AND status = 'pending'");
  expect(rows.length === 1, `expected one pending seeded invitation for dave, found ${rows.length}`);
  const accepted = await dave.call("acceptInvitation", { body: { invitationId: rows[0].id } });
  expect(accepted.member?.role === "member", `accepted as ${JSON.stringify(accepted.member)}`);
});

await step("create an organization", async () => {
  const org = await dave.call("createOrganization", {
    body: { name: "Dave Labs", slug: "dave-labs", metadata: { industry: "robotics", seats: 5 } },
  });
  expect(org.metadata?.industry === "robotics" && org.metadata?.seats === 5, `metadata came back as ${JSON.stringify(org.metadata)}`);
  out.organization = org.id;
  // getFullOrganization hands back the stored string, as it does on Better Auth's own schema.
  const full = await dave.call("getFullOrganization", { query: { organizationId: org.id } });
  const metadata = typeof full.metadata === "string" ? JSON.parse(full.metadata) : full.metadata;
  expect(metadata?.seats === 5, `getFullOrganization metadata ${JSON.stringify(full.metadata)}`);
});

await step("invite and accept as another user", async () => {
  const invitation = await dave.call("createInvitation", {
    body: { email: "frank@example.com", role: "member", organizationId: out.organization },
  });
  out.frankInvitation = invitation.id;
  const accepted = await frank.call("acceptInvitation", { body: { invitationId: invitation.id } });
  expect(accepted.member?.userId === out.frank, `frank's membership: ${JSON.stringify(accepted.member)}`);
});

await step("multi-role invitation", async () => {
  const invitation = await dave.call("createInvitation", {
    body: { email: "erin@example.com", role: ["admin", "member"], organizationId: out.organization },
  });
  expect(invitation.role === "admin,member", `invitation role ${invitation.role}`);
  out.erinInvitation = invitation.id;
  const accepted = await erin.call("acceptInvitation", { body: { invitationId: invitation.id } });
  expect(accepted.member?.role === "admin,member", `erin's role ${accepted.member?.role}`);
  out.erinMember = accepted.member.id;
});

await step("update a member's role", async () => {
  const updated = await dave.call("updateMemberRole", {
    body: { memberId: out.erinMember, role: "member", organizationId: out.organization },
  });
  expect(updated.role === "member", `updated role ${JSON.stringify(updated)}`);
});

await step("enable two-factor and verify a TOTP code", async () => {
  const enabled = await dave.call("enableTwoFactor", { body: { password: PASSWORD } });
  const secret = new URL(enabled.totpURI).searchParams.get("secret");
  expect(secret && enabled.backupCodes?.length > 0, `enableTwoFactor gave ${JSON.stringify(enabled)}`);
  out.daveTotp = secret;
  out.daveBackupCodes = enabled.backupCodes;
  await dave.call("verifyTOTP", { body: { code: totp(secret) } });
  const session = await dave.call("getSession");
  expect(session.user.twoFactorEnabled === true, "two-factor is not enabled after verifying");
});

await step("sign in through two-factor as seeded alice", async () => {
  const first = await alice.call("signInEmail", { body: { email: "alice@example.com", password: PASSWORD } });
  expect(first.twoFactorRedirect === true, `alice's sign-in skipped two-factor: ${JSON.stringify(first)}`);
  let refused = false;
  try {
    await alice.call("verifyTOTP", { body: { code: totp(ALICE_TOTP) === "000000" ? "111111" : "000000" } });
  } catch {
    refused = true;
  }
  expect(refused, "a wrong TOTP code was accepted");
  const verified = await alice.call("verifyTOTP", { body: { code: totp(ALICE_TOTP) } });
  expect(verified.user?.email === "alice@example.com", `verifyTOTP gave ${JSON.stringify(verified)}`);
  const session = await alice.call("getSession");
  expect(session?.user?.email === "alice@example.com", "alice has no session after two-factor");
});

await step("sign in with a seeded backup code", async () => {
  const again = new Browser();
  await again.call("signInEmail", { body: { email: "alice@example.com", password: PASSWORD } });
  await again.call("verifyBackupCode", { body: { code: "alice-backup-2" } });
  const session = await again.call("getSession");
  expect(session?.user?.email === "alice@example.com", "no session after a backup code");
});

await step("sign out", async () => {
  await alice.call("signOut");
  const session = await alice.call("getSession");
  expect(session === null, `still signed in: ${JSON.stringify(session)}`);
});

console.log(JSON.stringify(out));
await pool.end();
