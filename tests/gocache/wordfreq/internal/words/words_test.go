package words

import (
	"reflect"
	"testing"
)

func TestSplit(t *testing.T) {
	got := Split("The kiln's fire, the CLAY!")
	want := []string{"the", "kiln's", "fire", "the", "clay"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Split = %q, want %q", got, want)
	}
}
