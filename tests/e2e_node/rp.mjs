// The relying-party half of the openid-client end-to-end test (tests/test_e2e_rp.py).
//
//   node rp.mjs start  < {"issuer", "client_id", "client_secret", "redirect_uri", "scope"}
//   node rp.mjs finish < the same, plus {"callback_url", "state", "nonce", "code_verifier",
//                                         "post_logout_redirect_uri", "logout_state"}
//
// Each step reads one JSON object on stdin and writes one on stdout; the Python test
// plays the browser in between (fills the login form, follows redirects). Errors exit 1
// with a JSON {"error": ...} so that the test shows what the library refused.
import * as client from 'openid-client'
import { createRemoteJWKSet, jwtVerify } from 'jose'

const ACCEPTED_ALGORITHMS = ['RS256', 'ES256', 'EdDSA']

async function readInput () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function configure (input) {
  // http is acceptable here only because the test server listens on loopback.
  return client.discovery(new URL(input.issuer), input.client_id, undefined,
    client.ClientSecretBasic(input.client_secret), { execute: [client.allowInsecureRequests] })
}

async function start (input) {
  const config = await configure(input)
  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: input.redirect_uri,
    scope: input.scope,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce
  })
  return { url: url.href, state, nonce, code_verifier: codeVerifier }
}

async function finish (input) {
  const config = await configure(input)
  const metadata = config.serverMetadata()
  // The library checks state, iss (RFC 9207), the code exchange with PKCE, and the
  // ID token's iss, aud, exp, iat, nonce (and azp, auth_time when present).
  const tokens = await client.authorizationCodeGrant(config, new URL(input.callback_url), {
    pkceCodeVerifier: input.code_verifier,
    expectedState: input.state,
    expectedNonce: input.nonce,
    idTokenExpected: true
  })
  const claims = tokens.claims()

  // Verify the ID token's signature ourselves, against the published JWKS, with an
  // explicit algorithm list.
  const jwks = createRemoteJWKSet(new URL(metadata.jwks_uri))
  const verified = await jwtVerify(tokens.id_token, jwks, {
    algorithms: ACCEPTED_ALGORITHMS,
    issuer: metadata.issuer,
    audience: input.client_id
  })

  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub)
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
  const refreshIntrospection = await client.tokenIntrospection(config, refreshed.refresh_token,
    { token_type_hint: 'refresh_token' })
  const oldRefreshIntrospection = await client.tokenIntrospection(config, tokens.refresh_token)
  await client.tokenRevocation(config, refreshed.access_token, { token_type_hint: 'access_token' })
  const revokedIntrospection = await client.tokenIntrospection(config, refreshed.access_token)
  const endSession = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: input.post_logout_redirect_uri,
    state: input.logout_state
  })
  return {
    claims,
    header: verified.protectedHeader,
    userinfo,
    refresh_token_rotated: refreshed.refresh_token !== tokens.refresh_token,
    refresh_introspection: refreshIntrospection,
    old_refresh_introspection: oldRefreshIntrospection,
    revoked_introspection: revokedIntrospection,
    end_session_url: endSession.href
  }
}

const steps = { start, finish }
const step = steps[process.argv[2]]
if (!step) {
  process.stderr.write('usage: node rp.mjs start|finish < input.json\n')
  process.exit(2)
}
try {
  process.stdout.write(JSON.stringify(await step(await readInput())) + '\n')
} catch (error) {
  process.stdout.write(JSON.stringify({
    error: error.name, code: error.code, message: error.message, cause: String(error.cause ?? '')
  }) + '\n')
  process.exit(1)
}
