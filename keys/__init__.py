"""Key management: generation, encryption at rest, rotation and JWKS.

Nothing here knows about Flask or the database: `keys.ring.KeyRing` works over any
store that implements `keys.ring.KeyStore`, and `keys.master` seals private keys
under the instance's master key.
"""
