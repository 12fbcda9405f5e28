from rnnlm_cli.cli.app import main

if __name__ == "__main__":  # worker processes (tokenize --jobs) import this module without running the CLI
    main()
