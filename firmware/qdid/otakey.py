# The key agreement key for OTA of an identity's owner epoch (docs/identity.md "5. Seeds",
# docs/ota.md "The device's OTA key"): d = p256.scalar_from_seed(HMAC-SHA256(seed E,
# "qlink/ecdh")[:16]). A label of its own keeps it apart from the signing key of the same seed.
# A module of its own, loaded only where a proof or an update needs it: the identity's boot runs
# in a 64 KiB heap that has no room to spare for it.


def derive(ident):
    # -> (d, 65-byte public key) of ident's current epoch. Derived on each call, never kept: the
    # caller drops d once the content key is unwrapped.
    from qdid import p256
    from qdid.hmac import hmac_sha256

    d = p256.scalar_from_seed(hmac_sha256(ident.seed(ident.epoch), b"qlink/ecdh")[:16])
    return d, p256.public_key(d)
