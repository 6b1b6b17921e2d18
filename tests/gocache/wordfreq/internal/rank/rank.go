// Package rank orders word counts.
package rank

import "sort"

// Entry is one word and how often it occurs.
type Entry struct {
	Word  string
	Count int
}

// Top returns the n most frequent words, ties in alphabetical order.
func Top(counts map[string]int, n int) []Entry {
	entries := make([]Entry, 0, len(counts))
	for w, c := range counts {
		entries = append(entries, Entry{w, c})
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Count != entries[j].Count {
			return entries[i].Count > entries[j].Count
		}
		return entries[i].Word < entries[j].Word
	})
	if len(entries) > n {
		entries = entries[:n]
	}
	return entries
}
