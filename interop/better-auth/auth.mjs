import { betterAuth } from "better-auth";
import { organization, twoFactor } from "better-auth/plugins";
import pg from "pg";
import { kitSchema } from "./kit-schema.mjs";

const { schemas, ...kit } = kitSchema();

export const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });

export const auth = betterAuth({
  ...kit, // user, session, account, verification on the kit's tables; uuid ids
  database: pool,
  baseURL: process.env.BETTER_AUTH_URL ?? "http://localhost:3000",
  emailAndPassword: { enabled: true },
  plugins: [
    organization({ schema: schemas.organization }),
    twoFactor({ schema: schemas.twoFactor }),
  ],
});
