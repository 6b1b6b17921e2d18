// Command wordfreq prints the most frequent words of its standard input.
package main

import (
	"bufio"
	"fmt"
	"os"

	"example.com/wordfreq/internal/rank"
	"example.com/wordfreq/internal/words"
)

func main() {
	counts := map[string]int{}
	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		for _, w := range words.Split(scanner.Text()) {
			counts[w]++
		}
	}
	for i, e := range rank.Top(counts, 3) {
		fmt.Printf("%d. %s %d\n", i+1, e.Word, e.Count)
	}
}
