# Runs first on every boot. Its later job is to commit or roll back an OTA update (swap in the
# staged files with a trial counter); until OTA exists there is nothing to do, and nothing here
# may fail: a boot.py exception would stop the board before main.py.
