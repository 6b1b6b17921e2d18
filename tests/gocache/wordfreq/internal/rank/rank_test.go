package rank

import "testing"

func TestTopBreaksTiesAlphabetically(t *testing.T) {
	got := Top(map[string]int{"b": 2, "a": 2, "c": 5, "d": 1}, 3)
	want := []Entry{{"c", 5}, {"a", 2}, {"b", 2}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Top = %v, want %v", got, want)
		}
	}
}
