# Factory step, run on the device: enrol (or reconstruct) the identity and print the public part
# as one line, `QDID {"device_id": "...", "public_key": "..."}`, for the rig to collect.
# Only public values are printed.
import json
import binascii
import board
from qdid import QdidError
from qdid import identity


def main():
    try:
        ident = identity.boot(board.make())
    except QdidError as e:
        print("E enrol:", e)
        raise SystemExit(1)
    line = json.dumps(
        {"device_id": ident.device_id, "public_key": binascii.hexlify(ident.public_key).decode()}
    )
    ident.wipe()
    print("QDID " + line)


main()
