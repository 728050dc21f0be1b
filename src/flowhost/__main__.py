from flowhost.cli import main

if __name__ == "__main__":  # not when a spawned process re-imports it (embedding processes)
    main()
