// node-oidc-provider configured as the benchmark peer of congvu (see bench/README.md).
//
// What is configured, and why, so that both servers do the same work per request:
//   * one RS256 key (RSA 2048, like congvu's key ring), generated at start by the primary
//     and handed to every worker, so all workers sign with the same kid and /jwks agrees;
//   * one confidential client authenticating with client_secret_basic, allowed
//     client_credentials, refresh_token and authorization_code (node-oidc-provider also
//     accepts client_secret_post from a client_secret_basic client; the benchmark only
//     ever sends Basic);
//   * features.clientCredentials on, and resource indicators with a default resource whose
//     access tokens are JWTs signed RS256 (node-oidc-provider's default for
//     client_credentials is an opaque token kept in the adapter, which would not compare
//     with congvu's self-contained RFC 9068 JWTs);
//   * refresh tokens rotate on every use, as congvu's do;
//   * access tokens live 600 s, congvu's default.
//
// Process model: node's cluster module, 2 workers (PEER_WORKERS) sharing one listening
// socket, so the peer uses both cores like `gunicorn -w 2` does. The primary only forks,
// distributes connections and runs the bench-only control server described below.
//
// Storage: an unbounded in-process Map per worker. The bundled MemoryAdapter is an LRU of
// 1,000 entries, which would evict the refresh tokens seeded for the refresh benchmark.
// A production deployment would use Redis or a database; an in-process Map is the
// cheapest possible store, so the peer's refresh figures are an upper bound for it.
//
// Refresh tokens for the refresh-grant benchmark: they cannot be obtained through the
// authorization-code flow fast enough (a login and consent per token), so they are seeded
// through provider internals instead: for each token a Grant and a RefreshToken are built
// with `new provider.Grant(...)` / `new provider.RefreshToken(...)` and saved, exactly
// what the authorization-code grant would have stored. Because each worker has its own
// Map and either worker may receive a request, the primary chooses the token values and
// grant ids and every worker saves the same set. A consequence: a token's reuse is only
// detected by the worker that saw its first use, which the benchmark never relies on (the
// harness sends each value once). The harness asks for them on the control server:
//     POST http://127.0.0.1:<control-port>/mint-refresh?count=N&scope=offline_access%20api
// which answers with N refresh-token values, one per line. The control server listens on
// a different port from the provider, on 127.0.0.1 only, and exists only in this peer.
//
// Usage: node server.js [--port 4000] [--control-port 4001] [--issuer URL] [--workers 2]
// (or PEER_PORT, PEER_CONTROL_PORT, PEER_ISSUER, PEER_WORKERS, PEER_CLIENT_ID,
// PEER_CLIENT_SECRET, PEER_SCOPE). When every worker listens, the primary prints one JSON
// line starting with {"ready":true ...} on stdout.

import cluster from 'node:cluster';
import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'control-port': { type: 'string' },
    issuer: { type: 'string' },
    workers: { type: 'string' },
  },
});

const PORT = Number(args.port ?? process.env.PEER_PORT ?? 4000);
const CONTROL_PORT = Number(args['control-port'] ?? process.env.PEER_CONTROL_PORT ?? PORT + 1);
const ISSUER = args.issuer ?? process.env.PEER_ISSUER ?? `http://${HOST}:${PORT}`;
const WORKERS = Number(args.workers ?? process.env.PEER_WORKERS ?? 2);
const CLIENT_ID = process.env.PEER_CLIENT_ID ?? 'bench-client';
const CLIENT_SECRET = process.env.PEER_CLIENT_SECRET ?? 'bench-secret-0123456789abcdef0123456789abcdef';
// Scopes of the API resource server; client_credentials requests ask for (some of) these.
const API_SCOPES = (process.env.PEER_SCOPE ?? 'api').split(' ').filter(Boolean);
// The resource (RFC 8707) that every token is for when the request names none.
const RESOURCE = `${ISSUER}/api`;
const ACCESS_TOKEN_TTL = 600;
const REFRESH_TOKEN_TTL = 30 * 86400;


// ---------------------------------------------------------------------------------------
// primary: key generation, workers, control server

function runPrimary() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  // An RFC 7638 thumbprint as kid: stable for the key, like congvu's kids.
  const thumbprintInput = JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n });
  jwk.kid = crypto.createHash('sha256').update(thumbprintInput).digest('base64url');
  jwk.alg = 'RS256';
  jwk.use = 'sig';

  const workers = [];
  let listening = 0;
  let stopping = false;
  // Pending seed batches: id -> { remaining acks, resolve, reject }.
  const pending = new Map();
  let nextBatch = 1;

  for (let i = 0; i < WORKERS; i += 1) {
    const worker = cluster.fork({ PEER_SIGNING_JWK: JSON.stringify(jwk) });
    workers.push(worker);
    worker.on('listening', () => {
      listening += 1;
      // On stderr, so that the harness's log tells how far a slow start got.
      console.error(`worker ${worker.process.pid} listening (${listening}/${WORKERS})`);
      if (listening === WORKERS) startControlServer();
    });
    worker.on('message', (msg) => {
      const batch = pending.get(msg.batch);
      if (!batch) return;
      if (msg.type === 'seed-failed') {
        pending.delete(msg.batch);
        batch.reject(new Error(msg.error));
      } else if (msg.type === 'seeded') {
        batch.remaining -= 1;
        if (batch.remaining === 0) {
          pending.delete(msg.batch);
          batch.resolve();
        }
      }
    });
  }

  // A worker that dies mid-benchmark must not be replaced silently: the figures would
  // then come from fewer processes (or lose the seeded tokens). Stop everything instead.
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    console.error(`worker ${worker.process.pid} exited (code ${code}, signal ${signal}); stopping`);
    shutdown(1);
  });

  function shutdown(code) {
    stopping = true;
    for (const worker of workers) {
      if (!worker.isDead()) worker.process.kill('SIGTERM');
    }
    // Give the workers a moment to close their sockets, then go regardless.
    setTimeout(() => process.exit(code), 500).unref();
  }
  process.on('SIGTERM', () => shutdown(0));
  process.on('SIGINT', () => shutdown(0));

  // Sends one batch of tokens to every worker and waits until all of them stored it.
  function seedAll(tokens, scope) {
    const batch = nextBatch;
    nextBatch += 1;
    return new Promise((resolve, reject) => {
      pending.set(batch, { remaining: workers.length, resolve, reject });
      for (const worker of workers) worker.send({ type: 'seed', batch, tokens, scope });
    });
  }

  async function mintRefresh(count, scope) {
    const values = [];
    // Batches keep each IPC message a few hundred kilobytes.
    const BATCH = 5000;
    for (let start = 0; start < count; start += BATCH) {
      const tokens = [];
      for (let i = start; i < Math.min(count, start + BATCH); i += 1) {
        tokens.push({
          // 256 random bits, the length node-oidc-provider's own opaque tokens have.
          value: crypto.randomBytes(32).toString('base64url'),
          grantId: crypto.randomBytes(16).toString('base64url'),
          // One grant per simulated user, as real refresh tokens would come from.
          accountId: `bench-user-${crypto.randomBytes(6).toString('hex')}`,
        });
      }
      await seedAll(tokens, scope);
      for (const token of tokens) values.push(token.value);
    }
    return values;
  }

  function startControlServer() {
    const server = http.createServer((req, res) => {
      const url = new URL(req.url, `http://${HOST}`);
      if (req.method !== 'POST' || url.pathname !== '/mint-refresh') {
        res.writeHead(404).end();
        return;
      }
      const count = Number(url.searchParams.get('count') ?? '0');
      const scope = url.searchParams.get('scope') ?? `offline_access ${API_SCOPES.join(' ')}`;
      if (!Number.isInteger(count) || count < 1 || count > 2_000_000) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end('count must be 1..2000000\n');
        return;
      }
      mintRefresh(count, scope).then((values) => {
        res.writeHead(200, { 'content-type': 'text/plain' }).end(`${values.join('\n')}\n`);
      }, (err) => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`);
      });
    });
    server.on('error', (err) => {
      console.error(`control server: ${err.message}; stopping`);
      shutdown(1);
    });
    server.listen(CONTROL_PORT, HOST, () => {
      process.stdout.write(`${JSON.stringify({
        ready: true,
        issuer: ISSUER,
        port: PORT,
        control_port: CONTROL_PORT,
        workers: WORKERS,
        kid: jwk.kid,
        node: process.version,
      })}\n`);
    });
  }
}

// ---------------------------------------------------------------------------------------
// worker: the provider itself

// Unbounded per-process store (see the header comment for why not MemoryAdapter).
const store = new Map();

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, expiresAt });
    if (this.model === 'Session' && payload.uid) store.set(`sessionUid:${payload.uid}`, id);
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, id);
    if (payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const members = store.get(grantKey) ?? [];
      members.push(this.key(id));
      store.set(grantKey, members);
    }
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = store.get(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = store.get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const grantKey = `grant:${grantId}`;
    for (const key of store.get(grantKey) ?? []) store.delete(key);
    store.delete(grantKey);
  }
}

async function runWorker() {
  const signingJwk = JSON.parse(process.env.PEER_SIGNING_JWK);

  const configuration = {
    adapter: MapAdapter,
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: [`http://${HOST}:9/callback`],
      scope: ['openid', 'offline_access', ...API_SCOPES].join(' '),
    }],
    jwks: { keys: [signingJwk] },
    // Not used by the token endpoint, but the provider insists on them outside development.
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    scopes: ['openid', 'offline_access', ...API_SCOPES],
    // Refresh-grant requests look accounts up; every seeded account exists.
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    rotateRefreshToken: true,
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      RefreshToken: REFRESH_TOKEN_TTL,
      Grant: REFRESH_TOKEN_TTL,
      IdToken: ACCESS_TOKEN_TTL,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Requests that name no resource get the API: tokens are then JWTs (below).
        defaultResource: async () => RESOURCE,
        // A refresh grant keeps issuing for the resource the refresh token was granted for,
        // even when its scope contains openid, so refreshed access tokens are JWTs too.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: API_SCOPES.join(' '),
            audience: RESOURCE,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  };

  const provider = new Provider(ISSUER, configuration);
  provider.on('server_error', (_ctx, err) => console.error('server_error:', err));

  // Seeding (see the header comment): store a Grant and a RefreshToken per value, as the
  // authorization-code grant would have, with the value the primary chose as the jti.
  async function seed(tokens, scope) {
    const client = await provider.Client.find(CLIENT_ID);
    const scopes = scope.split(' ');
    const oidcScope = scopes.filter((s) => s === 'openid' || s === 'offline_access').join(' ');
    const apiScope = scopes.filter((s) => API_SCOPES.includes(s)).join(' ');
    const now = Math.floor(Date.now() / 1000);
    for (const { value, grantId, accountId } of tokens) {
      const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
      grant.jti = grantId;
      if (oidcScope) grant.addOIDCScope(oidcScope);
      if (apiScope) grant.addResourceScope(RESOURCE, apiScope);
      await grant.save();
      const refreshToken = new provider.RefreshToken({
        jti: value,
        client,
        accountId,
        grantId,
        gty: 'authorization_code',
        scope,
        resource: RESOURCE,
        authTime: now,
        expiresWithSession: false,
      });
      await refreshToken.save();
    }
  }

  process.on('message', (msg) => {
    if (msg?.type !== 'seed') return;
    seed(msg.tokens, msg.scope).then(
      () => process.send({ type: 'seeded', batch: msg.batch }),
      (err) => process.send({ type: 'seed-failed', batch: msg.batch, error: String(err) }),
    );
  });

  // Exit promptly, through process.exit, when the primary stops us (this also lets
  // `node --cpu-prof` write its profile, which the default signal death would not).
  process.on('SIGTERM', () => process.exit(0));

  // The cluster module shares this listening socket between the workers. A port taken
  // meanwhile by another program must stop the peer, not leave it half started.
  const server = provider.listen(PORT, HOST);
  server.on('error', (err) => {
    console.error(`worker ${process.pid}: ${err.message}`);
    process.exit(1);
  });
}

// ---------------------------------------------------------------------------------------
// entry point (last, so that the classes above are initialised before a worker uses them)

if (cluster.isPrimary) {
  runPrimary();
} else {
  runWorker().catch((err) => {
    console.error('worker failed to start:', err);
    process.exit(1);
  });
}
