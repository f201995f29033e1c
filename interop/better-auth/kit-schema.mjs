// Better Auth 1.7 on the kit's auth tables (plural snake_case, uuid keys). Use: auth.mjs beside this file.
//
// Better Auth's pg adapter does not pluralise or snake_case names by itself (`usePlural` is the Kysely
// adapter's, and no code reads a casing option), so every table gets its `modelName` and every camelCase
// field its column. Ids are uuids made by Better Auth (`generateId: "uuid"`), since the kit's keys are uuid
// columns. The suite's tests/test_better_auth.py runs the real Better Auth with this mapping and its
// schema check on.

const snake = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** `{ field: column }` for each camelCase field Better Auth writes. */
const columns = (...fields) => Object.fromEntries(fields.map((f) => [f, snake(f)]));

const timestamps = ["createdAt", "updatedAt"];

/** The options that map Better Auth onto the kit's tables; `schemas` go to the plugins. */
export function kitSchema() {
  return {
    user: { modelName: "users", fields: columns("emailVerified", ...timestamps) },
    session: {
      modelName: "sessions",
      fields: columns("expiresAt", "ipAddress", "userAgent", "userId", ...timestamps),
    },
    account: {
      modelName: "accounts",
      fields: columns(
        "accountId", "providerId", "userId", "accessToken", "refreshToken", "idToken",
        "accessTokenExpiresAt", "refreshTokenExpiresAt", ...timestamps,
      ),
    },
    verification: { modelName: "verifications", fields: columns("expiresAt", ...timestamps) },
    advanced: { database: { generateId: "uuid" } },
    schemas: {
      organization: {
        organization: { modelName: "organizations", fields: columns("createdAt") },
        member: { modelName: "members", fields: columns("organizationId", "userId", "createdAt") },
        invitation: {
          modelName: "invitations",
          fields: columns("organizationId", "inviterId", "expiresAt", "createdAt"),
        },
        session: { fields: columns("activeOrganizationId") },
      },
      twoFactor: {
        twoFactor: {
          modelName: "two_factors",
          fields: columns("backupCodes", "userId", "failedVerificationCount", "lockedUntil"),
        },
        user: { fields: columns("twoFactorEnabled") },
      },
    },
  };
}
