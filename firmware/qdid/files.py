# Flash filesystem helpers shared by qdid (helper data, health counter) and agent (onboarding
# result): whole-file reads and atomic replacement.
import os


def read(path):
    # The file's bytes, or None when it cannot be read (absent).
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write(path, data):
    # path := data, creating its folder if needed. A power cut leaves either the old file (or
    # none) or the complete new one, never part of one: write a temporary file, then rename it
    # over the final name (rename replaces the target atomically on littlefs and POSIX).
    d = path.rfind("/")
    if d > 0:
        try:
            os.mkdir(path[:d])
        except OSError:
            pass  # exists (EEXIST); a real failure shows up on the write that follows
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)
