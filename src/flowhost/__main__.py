from flowhost.cli import main

main()
