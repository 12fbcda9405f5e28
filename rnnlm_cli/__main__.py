from rnnlm_cli.cli.app import main

main()
