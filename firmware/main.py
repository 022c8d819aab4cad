# Runs the agent on this board (board.py is the board's HAL, copied from boards/<board>/).
import board
from agent import main

main.run(board.make())
