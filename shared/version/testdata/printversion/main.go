// Command printversion prints version.String(), for the version tests.
package main

import (
	"fmt"

	"github.com/tinyscada/tinyscada/shared/version"
)

func main() { fmt.Println(version.String()) }
