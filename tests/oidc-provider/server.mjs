// Test-only OAuth 2.0 authorization server for tower-client-credentials
// integration tests, built on panva's oidc-provider (pinned in package.json).
//
// Contract with the test that spawns it:
//   * listens on 127.0.0.1:$PORT (PORT unset or 0 => a random free port);
//   * prints exactly one line to stdout once listening:
//       LISTENING http://127.0.0.1:<port>
//     and that URL is exactly the `issuer` of its discovery document;
//   * everything else (oidc-provider notices, errors) goes to stderr;
//   * exits on SIGINT/SIGTERM and when its stdin reaches EOF / is closed, so a
//     test that spawns it with a piped stdin and drops the child never leaks it.
//
// Nothing here touches the network beyond the loopback listener.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// oidc-provider prints its NOTICEs with console.info (stdout). Keep stdout for
// the single LISTENING line only: route all console output to stderr.
const toStderr = (...args) => process.stderr.write(`${args.join(' ')}\n`);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
// Drop the two warnings that are expected for a throwaway test server
// (Node 20 is below oidc-provider 9's "supported" LTS line but works; the
// in-memory adapter is exactly what we want). Everything else still shows.
const QUIET = [
  'Unsupported runtime',
  'in-memory adapter',
];
console.warn = (...args) => {
  const line = args.join(' ');
  if (!process.env.OIDC_PROVIDER_VERBOSE && QUIET.some((q) => line.includes(q))) return;
  toStderr(line);
};

const { default: Provider, errors } = await import('oidc-provider');

const HOST = '127.0.0.1';
const RESOURCE = 'https://api.example.test';
// A second API, so that tests can ask for tokens of two audiences (tests/oidc_provider.rs,
// the multi-audience layer).
const SECOND_RESOURCE = 'https://api-b.example.test';
const API_SCOPES = 'api:read api:write';
const TOKEN_TTL = 300;

function exit(code = 0) {
  process.exit(code);
}
process.on('SIGINT', () => exit(0));
process.on('SIGTERM', () => exit(0));

// Exit when the parent closes our stdin. Only when stdin is a pipe/socket:
// with stdin = /dev/null (e.g. CI without standard input, or a Rust
// Stdio::null()) EOF would be immediate, and a TTY never closes.
// OIDC_EXIT_ON_STDIN_EOF=1 forces it on, =0 forces it off.
const stdinStat = (() => {
  try { return fs.fstatSync(0); } catch { return undefined; }
})();
const watchStdin = process.env.OIDC_EXIT_ON_STDIN_EOF !== undefined
  ? process.env.OIDC_EXIT_ON_STDIN_EOF === '1'
  : Boolean(stdinStat && (stdinStat.isFIFO() || stdinStat.isSocket()));
if (watchStdin) {
  process.stdin.on('end', () => exit(0));
  process.stdin.on('close', () => exit(0));
  process.stdin.on('error', () => exit(0));
  process.stdin.resume(); // flowing mode so 'end' fires on EOF
}

// Fresh signing key per run (RS256 is the default JWT access token alg).
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: 'test-rs256',
  use: 'sig',
  alg: 'RS256',
};

// Public halves of the client keys for private_key_jwt (RFC 7523). TEST-ONLY
// key pairs, committed on purpose: the private keys are
// tests/oidc-provider/test-client-key.pem (RSA 2048, RS256) and
// tests/oidc-provider/test-es256-key.pem (EC P-256, ES256). Never use them for
// anything else. tests/oidc-provider/test-other-key.pem is registered nowhere
// (a "wrong key" for tests).
const CLIENT_RS256_JWK = {
  kty: 'RSA',
  kid: 'test-client-rs256',
  use: 'sig',
  alg: 'RS256',
  n: 'v1M1DuThqXCaM08qy8K9yr1lTpGGjKvnzflIXv_XgCyThKJmh-IlqJ0sGSMu1dMt46bEjC6h8EctqPhATTA1lerdSuqYZ1yrX_XRzbUUWN-Ea_oKgAe4EIVual1qj0Oh_cXOohIziui78EikrIgf1sArhZHsgfFys0D0zDOqFfvXGRSz13dEMS4XLbcd0G9ui_0D8wtiCjN9lmkk2-ws-SQILGR1U2r-SaOCDWR-5CpCBc78Zz6ezpFtYDdXvBtW1lk_3p4hBU5YGBYjvqMfODgGo2sxLvs52H02p4NusmIZKirzQV9qvbhL9NU8stjOOGFGMyja5vjREtqgKFjEnw',
  e: 'AQAB',
};
const CLIENT_ES256_JWK = {
  kty: 'EC',
  kid: 'test-client-es256',
  use: 'sig',
  alg: 'ES256',
  crv: 'P-256',
  x: 'JUKHuXb2_TPu762fmFmTP7GC8XLOZNkQlXoCkcKgZYE',
  y: 'YFxXA0TfvuG-RrOdfFvpYoBLie7rqa5nIOoLhuwhem0',
};

// Bind first so the issuer can carry the real port; the request handler is
// swapped in once the Provider exists (nothing can connect before we print).
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = http.createServer((req, res) => handler(req, res));

const port = Number.parseInt(process.env.PORT ?? '0', 10) || 0;
server.listen(port, HOST, () => {
  const issuer = `http://${HOST}:${server.address().port}`;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'basic-client',
        client_secret: 'basic secret:with%special&chars',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: API_SCOPES,
      },
      {
        client_id: 'post-client',
        client_secret: 'post-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
        scope: API_SCOPES,
      },
      {
        client_id: 'secret-jwt-client',
        client_secret: 'secret-jwt-secret-at-least-32-bytes-long!!',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_jwt',
        token_endpoint_auth_signing_alg: 'HS256',
        scope: API_SCOPES,
      },
      {
        client_id: 'key-jwt-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'RS256',
        jwks: { keys: [CLIENT_RS256_JWK] },
        scope: API_SCOPES,
      },
      {
        client_id: 'key-jwt-es256-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'ES256',
        jwks: { keys: [CLIENT_ES256_JWK] },
        scope: API_SCOPES,
      },
    ],
    // Advertised in discovery and kept on the (opaque) token issued when no
    // `resource` is requested; without this they would be silently dropped.
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    jwks: { keys: [signingJwk] },
    cookies: { keys: ['tower-client-credentials-test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Lets a test inspect the opaque (no `resource`) tokens; any
      // authenticated confidential client may introspect any token.
      introspection: { enabled: true, allowedPolicy: async () => true },
      resourceIndicators: {
        enabled: true,
        // No implicit resource: a request without `resource` gets an opaque
        // token (oidc-provider's own behaviour), with `resource` a JWT.
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator === RESOURCE || resourceIndicator === SECOND_RESOURCE) {
            return {
              scope: API_SCOPES,
              audience: resourceIndicator,
              accessTokenTTL: TOKEN_TTL,
              accessTokenFormat: 'jwt',
            };
          }
          throw new errors.InvalidTarget();
        },
      },
    },
    ttl: {
      ClientCredentials: TOKEN_TTL,
      AccessToken: TOKEN_TTL,
    },
    clientBasedCORS: () => false,
  });

  // oidc-provider itself treats client_secret_basic and client_secret_post as
  // interchangeable (a basic client may send its secret in the body and vice
  // versa). STRICT_CLIENT_AUTH=1 turns a mismatch into 401 invalid_client so
  // a test can prove which method the client under test actually used.
  if (process.env.STRICT_CLIENT_AUTH === '1') {
    provider.use(async (ctx, next) => {
      await next();
      const client = ctx.oidc?.client;
      if (ctx.oidc?.route !== 'token' || ctx.status !== 200 || !client) return;
      let used;
      if (ctx.headers.authorization !== undefined) used = 'client_secret_basic';
      else if (ctx.oidc.params?.client_secret !== undefined) used = 'client_secret_post';
      if (used && used !== client.clientAuthMethod) {
        ctx.status = 401;
        ctx.body = {
          error: 'invalid_client',
          error_description: `client is registered for ${client.clientAuthMethod} but used ${used}`,
        };
      }
    });
  }

  provider.on('server_error', (_ctx, err) => toStderr('server_error', err?.stack ?? err));

  handler = provider.callback();
  process.stdout.write(`LISTENING ${issuer}\n`);
});

server.on('error', (err) => {
  toStderr(`listen failed: ${err.message}`);
  exit(1);
});
