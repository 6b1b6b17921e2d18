// Package words splits text into lower-case words.
package words

import (
	"strings"
	"unicode"
)

// Split returns the words of line, lower-cased, without punctuation.
func Split(line string) []string {
	return strings.FieldsFunc(strings.ToLower(line), func(r rune) bool {
		return !unicode.IsLetter(r) && r != '\''
	})
}
