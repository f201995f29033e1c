// Whom Better Auth signs in for a Cookie header: `node session.mjs '<cookie header>'` prints
// {"email": ..., "activeOrganizationId": ...} (nulls when it finds no session). Used by tests/test_better_auth.py.
import { auth, pool } from "./auth.mjs";

const session = await auth.api.getSession({ headers: new Headers({ cookie: process.argv[2] ?? "" }) });
console.log(JSON.stringify({
  email: session?.user?.email ?? null,
  activeOrganizationId: session?.session?.activeOrganizationId ?? null,
}));
await pool.end();
