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
import * as https from 'node:https';

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

// The server's signing key (RS256 is the default JWT access token alg): a test-only key kept in
// this folder. Not generated per run: Node 20's generateKeyPairSync followed by a JWK export can
// deadlock in a garbage collection (the KeyGenJob destructor takes a mutex the export holds),
// which hung about one start in twenty here.
const privateKey = crypto.createPrivateKey(
  fs.readFileSync(new URL('./test-signing-key.pem', import.meta.url)),
);
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

// Workload identity (issue 23): the "platform" (a Kubernetes cluster, Entra, AWS) signs the
// workload's short-lived JWT with its own key; the client registers the platform's public key
// and sends the platform's JWT as its private_key_jwt assertion. TEST-ONLY key pair: the private
// half is tests/oidc-provider/test-platform-key.pem, which the tests sign with.
const PLATFORM_JWK = {
  ...crypto.createPublicKey(
    fs.readFileSync(new URL('./test-platform-key.pub.pem', import.meta.url)),
  ).export({ format: 'jwk' }),
  kid: 'platform',
  use: 'sig',
  alg: 'RS256',
};

// TLS=1: serve https with the test certificates of tests/mtls/ (made with openssl, valid for a
// century, TEST-ONLY), asking every client for a certificate (verified against the test CA but
// not required: `tls_client_auth` checks it). The mTLS clients below need this mode.
const TLS = process.env.TLS === '1';
const mtlsFile = (name) => fs.readFileSync(new URL(`../mtls/${name}`, import.meta.url));
// self_signed_tls_client_auth: the client registers its self-signed certificate as a JWK.
const SELF_SIGNED_JWK = (() => {
  const cert = new crypto.X509Certificate(mtlsFile('self-signed.pem'));
  return { ...cert.publicKey.export({ format: 'jwk' }), x5c: [cert.raw.toString('base64')] };
})();
const peerCertificate = (socket) => (typeof socket?.getPeerX509Certificate === 'function'
  ? socket.getPeerX509Certificate() ?? undefined
  : undefined);

// Bind first so the issuer can carry the real port; the request handler is
// swapped in once the Provider exists (nothing can connect before we print).
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = TLS
  ? https.createServer({
    key: mtlsFile('server-key.pem'),
    cert: mtlsFile('server.pem'),
    ca: mtlsFile('ca.pem'),
    requestCert: true,
    rejectUnauthorized: false,
  }, (req, res) => handler(req, res))
  : http.createServer((req, res) => handler(req, res));

const port = Number.parseInt(process.env.PORT ?? '0', 10) || 0;
server.listen(port, HOST, () => {
  const issuer = `${TLS ? 'https' : 'http'}://${HOST}:${server.address().port}`;

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
      {
        client_id: 'workload-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'RS256',
        jwks: { keys: [PLATFORM_JWK] },
        scope: API_SCOPES,
      },
      // private_key_jwt and a DPoP nonce: oidc-provider authenticates the client (and uses up
      // the assertion's jti) before it checks the proof's nonce (issue 19, defect 3).
      {
        client_id: 'key-jwt-dpop-nonce-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'RS256',
        jwks: { keys: [CLIENT_RS256_JWK] },
        scope: API_SCOPES,
        dpop_bound_access_tokens: true,
      },
      // DPoP (RFC 9449): tokens must be bound to the proof's key; the second client must
      // also put a server nonce in its proofs (see features.dPoP.requireNonce).
      {
        client_id: 'dpop-client',
        client_secret: 'dpop-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: API_SCOPES,
        dpop_bound_access_tokens: true,
      },
      {
        client_id: 'dpop-nonce-client',
        client_secret: 'dpop-nonce-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: API_SCOPES,
        dpop_bound_access_tokens: true,
      },
      // RFC 8705 (TLS=1): a CA-issued certificate with this subject, and a self-signed one.
      {
        client_id: 'mtls-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'tls_client_auth',
        tls_client_auth_subject_dn: 'CN=mtls-client',
        tls_client_certificate_bound_access_tokens: true,
        scope: API_SCOPES,
      },
      {
        client_id: 'self-signed-mtls-client',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'self_signed_tls_client_auth',
        jwks: { keys: [SELF_SIGNED_JWK] },
        tls_client_certificate_bound_access_tokens: true,
        scope: API_SCOPES,
      },
    ],
    clientAuthMethods: [
      'client_secret_basic',
      'client_secret_post',
      'client_secret_jwt',
      'private_key_jwt',
      'none',
      'tls_client_auth',
      'self_signed_tls_client_auth',
    ],
    // RFC 8705 §5: certificate-authenticated token requests go to this alias (see the handler).
    discovery: TLS ? { mtls_endpoint_aliases: { token_endpoint: `${issuer}/mtls/token` } } : {},
    // Advertised in discovery and kept on the (opaque) token issued when no
    // `resource` is requested; without this they would be silently dropped.
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    jwks: { keys: [signingJwk] },
    cookies: { keys: ['tower-client-credentials-test-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => peerCertificate(ctx.socket),
        certificateAuthorized: (ctx) => ctx.socket?.authorized === true,
        certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
          && peerCertificate(ctx.socket)?.subject === expected,
      },
      dPoP: {
        enabled: true,
        nonceSecret: crypto.randomBytes(32),
        requireNonce: (ctx) => ['dpop-nonce-client', 'key-jwt-dpop-nonce-client']
          .includes(ctx.oidc?.client?.clientId),
      },
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

  const callback = provider.callback();
  // TLS=1: the mTLS alias is the token endpoint for certificate-authenticated clients; the
  // plain one refuses them, so a test sees which one a client used.
  handler = (req, res) => {
    const path = req.url.split('?')[0];
    if (TLS && path === '/mtls/token') {
      req.url = req.url.replace('/mtls/token', '/token');
    } else if (TLS && path === '/token' && peerCertificate(req.socket)) {
      res.statusCode = 400;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        error: 'invalid_request',
        error_description: 'certificate-authenticated requests go to mtls_endpoint_aliases.token_endpoint',
      }));
      return;
    }
    callback(req, res);
  };
  process.stdout.write(`LISTENING ${issuer}\n`);
});

server.on('error', (err) => {
  toStderr(`listen failed: ${err.message}`);
  exit(1);
});
